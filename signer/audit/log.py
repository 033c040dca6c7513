"""Append-only, hash-chained audit log with group commit.

Fail closed: ``record`` returns only once the entries are committed; if they cannot be,
it raises ``AuditUnavailable`` and the caller returns no signature. SQLite in WAL mode
with ``synchronous=NORMAL`` survives the writing process being killed (SIGKILL) once a
commit has returned, which is the promise we make: no entry is lost for a signature that
was handed out.

Many requests arrive at once; one writer thread commits whatever is pending in one
transaction (group commit), so the log costs one fsync-free commit per batch rather
than per request. Several worker processes share the chain: each transaction takes the
write lock (BEGIN IMMEDIATE) and reads the tip of the chain inside it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from enum import StrEnum
from pathlib import Path

from signer.errors import AuditUnavailable, PermissionDenied, ResourceExhausted, SignerError
from signer.storage.sqlite import connect

log = logging.getLogger(__name__)

GENESIS = "0" * 64

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    principal TEXT NOT NULL,
    operation TEXT NOT NULL,
    key_id TEXT NOT NULL,
    role TEXT NOT NULL,
    repository TEXT NOT NULL,
    payload_sha256 TEXT NOT NULL,
    outcome TEXT NOT NULL,
    code TEXT NOT NULL,
    detail TEXT NOT NULL,
    request_id TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
)
"""

# Signed (seq, hash) of the chain's tip, written by signer.audit.checkpoint.
_CHECKPOINT_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    id INTEGER PRIMARY KEY,
    seq INTEGER NOT NULL UNIQUE,
    hash TEXT NOT NULL,
    time REAL NOT NULL,
    key_id TEXT NOT NULL,
    body TEXT NOT NULL,
    signature TEXT NOT NULL
)
"""


class Outcome(StrEnum):
    ALLOWED = "allowed"  # the operation was carried out
    DENIED = "denied"  # refused by policy or payload rules
    FAILED = "failed"  # allowed but could not be carried out (bad input, token fault)


def failure_outcome(exc: SignerError) -> Outcome:
    """A refusal (policy, rate limit) is DENIED; anything else that went wrong is FAILED."""
    return (
        Outcome.DENIED if isinstance(exc, PermissionDenied | ResourceExhausted) else Outcome.FAILED
    )


@dataclass(frozen=True)
class AuditEvent:
    principal: str
    operation: str
    outcome: Outcome
    key_id: str = ""
    role: str = ""
    repository: str = ""
    payload_sha256: str = ""  # never the payload itself
    code: str = "OK"
    detail: str = ""
    request_id: str = ""
    time: float = field(default_factory=time.time)


_FIELDS = tuple(f.name for f in fields(AuditEvent))


def astuple_flat(event: AuditEvent) -> tuple[object, ...]:
    """The event's field values; ``dataclasses.asdict`` deep-copies and costs 10x more."""
    return tuple(getattr(event, name) for name in _FIELDS)


def entry_hash(prev_hash: str, seq: int, event: dict[str, object]) -> str:
    """The chain link: sha256 over the previous hash, the sequence and the entry's fields."""
    body = {k: event[k] for k in sorted(event) if k not in ("seq", "prev_hash", "hash")}
    material = json.dumps([prev_hash, seq, body], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(material.encode()).hexdigest()


class _Pending:
    """Entries waiting to be committed."""

    __slots__ = ("done", "error", "events", "seqs")

    def __init__(self, events: Sequence[AuditEvent]) -> None:
        self.events = events
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.seqs: list[int] = []


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn = connect(path)
        self._conn.execute(_SCHEMA)
        self._conn.execute(_CHECKPOINT_SCHEMA)
        self._cv = threading.Condition()
        self._commit_lock = threading.Lock()
        self._loop_queue: list[tuple[_Pending, asyncio.Future[list[int]]]] = []
        self._loop_flush_scheduled = False
        self._queue: list[_Pending] = []
        self._stopped = False
        self._listeners: list[Callable[[int], object]] = []
        self._writer = threading.Thread(target=self._write_loop, name="audit-writer", daemon=True)
        self._writer.start()

    def record(self, *events: AuditEvent) -> list[int]:
        """Append events durably; return their sequence numbers. Raises AuditUnavailable."""
        pending = _Pending(events)
        with self._cv:
            if self._stopped:
                raise AuditUnavailable("the audit log is closed")
            self._queue.append(pending)
            self._cv.notify()
        pending.done.wait()
        if pending.error is not None:
            raise AuditUnavailable(
                f"the audit log could not be written ({pending.error}); nothing was signed"
            ) from pending.error
        return pending.seqs

    async def record_async(self, *events: AuditEvent) -> list[int]:
        """``record`` for the asyncio server: group commit on the event loop itself.

        Every request that reaches this point in the same turn of the loop joins one
        transaction, committed by a callback on the loop: no hand-off to another thread
        (which would wait for the GIL), one commit for many signatures.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[int]] = loop.create_future()
        self._loop_queue.append((_Pending(events), future))
        if not self._loop_flush_scheduled:
            self._loop_flush_scheduled = True
            loop.call_soon(self._flush_loop_queue)
        return await future

    def _flush_loop_queue(self) -> None:
        self._loop_flush_scheduled = False
        batch, self._loop_queue = self._loop_queue, []
        if self._stopped:
            error: BaseException | None = RuntimeError("the audit log is closed")
        else:
            try:
                self._commit([pending for pending, _ in batch])
                error = None
            except BaseException as exc:
                log.exception("audit write failed")
                error = exc
        for pending, future in batch:
            if future.done():
                continue
            if error is None:
                future.set_result(pending.seqs)
            else:
                future.set_exception(
                    AuditUnavailable(
                        f"the audit log could not be written ({error}); nothing was signed"
                    )
                )

    def on_commit(self, listener: Callable[[int], object]) -> None:
        """Call ``listener(last_seq)`` after each commit; it must return at once."""
        self._listeners.append(listener)

    def close(self) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify()
        self._writer.join(timeout=10)
        self._conn.close()

    def _write_loop(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._stopped:
                    self._cv.wait()
                batch, self._queue = self._queue, []
                if not batch and self._stopped:
                    return
            try:
                self._commit(batch)
            except BaseException as exc:
                log.exception("audit write failed")
                for pending in batch:
                    pending.error = exc
            for pending in batch:
                pending.done.set()

    def _commit(self, batch: list[_Pending]) -> None:
        with self._commit_lock:
            self._commit_locked(batch)
        last = max((s for p in batch for s in p.seqs), default=0)
        for listener in self._listeners:  # e.g. the checkpointer: wakes, never blocks
            try:
                listener(last)
            except Exception:
                log.exception("audit commit listener failed")

    def _commit_locked(self, batch: list[_Pending]) -> None:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            tip = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
            seq, prev = (tip[0], tip[1]) if tip else (0, GENESIS)
            rows = []
            for pending in batch:
                for event in pending.events:
                    seq += 1
                    row: dict[str, object] = dict(zip(_FIELDS, astuple_flat(event), strict=True))
                    row["outcome"] = str(event.outcome)
                    digest = entry_hash(prev, seq, row)
                    row.update(seq=seq, prev_hash=prev, hash=digest)
                    rows.append(row)
                    pending.seqs.append(seq)
                    prev = digest
            columns = list(rows[0]) if rows else []
            if rows:
                conn.executemany(
                    f"INSERT INTO audit ({', '.join(columns)}) "
                    f"VALUES ({', '.join('?' for _ in columns)})",
                    [[r[c] for c in columns] for r in rows],
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            for pending in batch:
                pending.seqs.clear()
            raise
