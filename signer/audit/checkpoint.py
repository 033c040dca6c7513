"""Signed checkpoints of the audit chain, made by a key that never leaves the token.

The hash chain shows an edit, deletion or reordering to anyone who re-walks it, but
anyone with write access to the SQLite file could rebuild the whole chain after an edit.
A checkpoint closes that gap: every N entries or T seconds the daemon signs the chain's
tip, ``{"_type": "signerd-audit-checkpoint", "seq": S, "hash": H, "time": ...}`` (canonical
JSON), with the audit key. A rewritten chain no longer matches a signed checkpoint. Each
checkpoint also goes to the configured anchors (``signer.audit.anchor``), outside the
database, which makes a truncated tail or forged appends detectable too.

This package is a leaf: it knows nothing of the token or the registry. The signing key is
injected as a ``CheckpointSigner`` (the daemon's is ``signer.audit_key.AuditKey``: ECDSA
P-256 in the token, role ``audit`` in the registry, generated on first use).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from securesystemslib.formats import encode_canonical

from signer.audit.anchor import AnchoredCheckpoint, Anchors, CommandAnchor, FileAnchor
from signer.audit.log import AuditLog

if TYPE_CHECKING:
    from signer.config import AuditConfig

log = logging.getLogger(__name__)

CHECKPOINT_TYPE = "signerd-audit-checkpoint"


class CheckpointSigner(Protocol):
    """Signs checkpoint bodies. ``key_id`` names the key ``sign`` uses (first use may
    create it); ``sign`` returns the signature bytes a ``CheckpointVerifier`` checks."""

    @property
    def key_id(self) -> str: ...

    def sign(self, message: bytes) -> bytes: ...


class CheckpointVerifier(Protocol):
    """The public half of an audit key: True if ``signature`` is its signature over
    ``message``."""

    def verify(self, message: bytes, signature: bytes) -> bool: ...


# key id -> verifier, as found by whoever knows where audit keys are registered.
AuditKeys = Mapping[str, CheckpointVerifier]


def anchors_of(settings: AuditConfig) -> Anchors:
    """The sinks ``[audit]`` names: the anchor file, the anchor command, both or neither."""
    sinks: list[FileAnchor | CommandAnchor] = []
    if settings.anchor_file is not None:
        sinks.append(FileAnchor(settings.anchor_file))
    if settings.anchor_command:
        sinks.append(CommandAnchor(settings.anchor_command))
    return Anchors(sinks)


def checkpoint_body(seq: int, tip_hash: str, when: float) -> str:
    stamp = dt.datetime.fromtimestamp(when, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    body = {"_type": CHECKPOINT_TYPE, "hash": tip_hash, "seq": seq, "time": stamp}
    return str(encode_canonical(body))


class Checkpointer:
    """A background thread that signs the chain's tip when it is due, and anchors it."""

    def __init__(self, audit: AuditLog, signer: CheckpointSigner, settings: AuditConfig) -> None:
        self.audit = audit
        self.signer = signer
        self.settings = settings
        self.anchors = anchors_of(settings)
        self._chain = audit.chain  # checkpoints are stored durably, like the entries
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._since = time.time()
        self._last_seq = 0
        self._unanchored: list[AnchoredCheckpoint] = []  # anchors that failed: retried
        audit.on_commit(self._committed)

    def _committed(self, seq: int) -> None:
        if seq - self._last_seq >= self.settings.checkpoint_entries:
            self._wake.set()

    def start(self) -> None:
        """Cover what an unclean stop left uncovered (before new entries), then run."""
        try:
            self.checkpoint(force=True)
        except Exception as exc:  # the token may not be usable yet: the thread retries
            log.warning("audit checkpoint at start skipped, will retry: %s", exc)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="audit-checkpoint", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the thread and sign a last checkpoint of whatever is new (best effort)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            self.checkpoint(force=True)
        except Exception as exc:
            log.warning("final audit checkpoint skipped: %s", exc)

    def _run(self) -> None:
        poll = max(0.05, min(1.0, self.settings.checkpoint_seconds / 2))
        while not self._stop.is_set():
            self._wake.wait(poll)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.checkpoint()
            except Exception as exc:  # the token may be healing, the disk full: retry
                log.warning("audit checkpoint failed, will retry: %s", exc)

    def checkpoint(self, force: bool = False) -> int | None:
        """Sign the tip if it is due; returns the sequence number checkpointed, if any."""
        with self._lock:
            self._retry_anchors()
            tip = self._chain.tip()
            if tip is None:
                return None
            last = self._chain.last_checkpoint()
            last_seq, last_time = last if last else (0, self._since)
            seq, tip_hash = tip
            self._last_seq = last_seq
            if seq <= last_seq:
                return None
            now = time.time()
            due = (
                force
                or seq - last_seq >= self.settings.checkpoint_entries
                or now - last_time >= self.settings.checkpoint_seconds
            )
            if not due:
                return None
            key_id = self.signer.key_id  # its first use records the key's creation:
            tip = self._chain.tip()  # so read the tip again, to cover that entry too
            assert tip is not None
            seq, tip_hash = tip
            body = checkpoint_body(seq, tip_hash, now)
            signature = self.signer.sign(body.encode()).hex()
            row_id = self._chain.add_checkpoint(seq, tip_hash, now, key_id, body, signature)
            self._last_seq = seq
            if row_id is not None:  # not made by another worker at the same moment
                self._anchor(AnchoredCheckpoint(row_id, seq, tip_hash, key_id, body, signature))
            return seq

    def _anchor(self, checkpoint: AnchoredCheckpoint) -> None:
        if not self.anchors.sinks:
            return
        try:
            self.anchors.write(checkpoint)
        except OSError as exc:
            log.error("audit checkpoint %d not anchored yet, will retry: %s", checkpoint.id, exc)
            self._unanchored.append(checkpoint)

    def _retry_anchors(self) -> None:
        pending, self._unanchored = self._unanchored, []
        for checkpoint in pending:
            self._anchor(checkpoint)
