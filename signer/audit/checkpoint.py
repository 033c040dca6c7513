"""Signed checkpoints of the audit chain, made by a key that never leaves the token.

The hash chain shows an edit, deletion or reordering to anyone who re-walks it, but
anyone with write access to the SQLite file could rebuild the whole chain after an edit.
A checkpoint closes that gap: every N entries or T seconds the daemon signs the chain's
tip, ``{"_type": "signerd-audit-checkpoint", "seq": S, "hash": H, "time": ...}`` (canonical
JSON), with the audit key (ECDSA P-256, role ``audit`` in the registry, generated inside
the token on first use). A rewritten chain no longer matches a signed checkpoint.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from securesystemslib.formats import encode_canonical

from signer.algorithms import ECDSA_P256, public_key_pem, tuf_key, tuf_key_json
from signer.audit.log import AuditEvent, AuditLog, Outcome
from signer.keys import AUDIT_ROLE
from signer.registry import KeyRecord, KeyRegistry
from signer.storage.sqlite import connect
from signer.token import Token

log = logging.getLogger(__name__)

CHECKPOINT_TYPE = "signerd-audit-checkpoint"
AUDIT_KEY_LABEL = "signerd-audit"
SYSTEM_PRINCIPAL = "signerd"  # the daemon itself, in audit entries it writes on its own


@dataclass(frozen=True)
class CheckpointSettings:
    every_entries: int = 1000
    every_seconds: float = 60.0

    @classmethod
    def from_config(cls, extra: dict[str, object]) -> CheckpointSettings:
        section = extra.get("audit", {})
        if not isinstance(section, dict):
            return cls()
        return cls(
            int(section.get("checkpoint_entries", cls.every_entries)),
            float(section.get("checkpoint_seconds", cls.every_seconds)),
        )


def checkpoint_body(seq: int, tip_hash: str, when: float) -> str:
    stamp = dt.datetime.fromtimestamp(when, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    body = {"_type": CHECKPOINT_TYPE, "hash": tip_hash, "seq": seq, "time": stamp}
    return str(encode_canonical(body))


class Checkpointer:
    """A background thread that signs the chain's tip when it is due."""

    def __init__(
        self,
        path: Path,
        token: Token,
        registry: KeyRegistry,
        audit: AuditLog,
        settings: CheckpointSettings,
    ) -> None:
        self.token = token
        self.registry = registry
        self.audit = audit
        self.settings = settings
        self._conn = connect(path)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._since = time.time()
        self._last_seq = 0
        audit.on_commit(self._committed)

    def _committed(self, seq: int) -> None:
        if seq - self._last_seq >= self.settings.every_entries:
            self._wake.set()

    def start(self) -> None:
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
        self._conn.close()

    def _run(self) -> None:
        poll = max(0.05, min(1.0, self.settings.every_seconds / 2))
        while not self._stop.is_set():
            self._wake.wait(poll)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.checkpoint()
            except Exception as exc:  # the token may be healing: try again later
                log.warning("audit checkpoint failed, will retry: %s", exc)

    def checkpoint(self, force: bool = False) -> int | None:
        """Sign the tip if it is due; returns the sequence number checkpointed, if any."""
        with self._lock:
            tip = self._conn.execute(
                "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1"
            ).fetchone()
            if tip is None:
                return None
            last = self._conn.execute(
                "SELECT seq, time FROM audit_checkpoints ORDER BY seq DESC LIMIT 1"
            ).fetchone()
            last_seq, last_time = (int(last[0]), float(last[1])) if last else (0, self._since)
            seq, tip_hash = int(tip[0]), str(tip[1])
            self._last_seq = last_seq
            if seq <= last_seq:
                return None
            now = time.time()
            due = (
                force
                or seq - last_seq >= self.settings.every_entries
                or now - last_time >= self.settings.every_seconds
            )
            if not due:
                return None
            key = self.audit_key()
            body = checkpoint_body(seq, tip_hash, now)
            alg = key.algorithm
            raw = self.token.sign(key.object_id, alg, alg.to_be_signed(body.encode()))
            signature = alg.encode_signature(raw).hex()
            self._conn.execute(
                "INSERT OR IGNORE INTO audit_checkpoints (seq, hash, time, key_id, body, signature)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (seq, tip_hash, now, key.key_id, body, signature),
            )
            self._last_seq = seq
            return seq

    def audit_key(self) -> KeyRecord:
        """The active audit key; generated in the token and registered on first use.

        Workers race to make it on their first checkpoint: the maker holds the audit
        database's write lock meanwhile, so exactly one key is made.
        """
        found = self._find_key()
        if found is not None:
            return found
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            found = self._find_key()  # made by another worker while we waited?
            if found is None:
                record = self._make_key()
        finally:
            self._conn.execute("COMMIT")
        if found is not None:
            return found
        self.audit.record(  # after COMMIT: the audit writer needs the lock we held
            AuditEvent(
                SYSTEM_PRINCIPAL,
                "create",
                Outcome.ALLOWED,
                record.key_id,
                AUDIT_ROLE,
                detail="audit checkpoint key",
            )
        )
        log.info("created the audit checkpoint key %s in the token", record.key_id)
        return record

    def _find_key(self) -> KeyRecord | None:
        for record in self.registry.find(role=AUDIT_ROLE, state="active"):
            return record
        return None

    def _make_key(self) -> KeyRecord:
        object_id, public = self.token.generate(ECDSA_P256, AUDIT_KEY_LABEL)
        key = tuf_key(ECDSA_P256, public)
        return self.registry.add(
            KeyRecord(
                key_id=key.keyid,
                object_id=object_id,
                algorithm_name=ECDSA_P256.name,
                label=AUDIT_KEY_LABEL,
                role=AUDIT_ROLE,
                repository="",
                public_key_pem=public_key_pem(public),
                tuf_key_json=tuf_key_json(key),
                created_by=SYSTEM_PRINCIPAL,
            )
        )
