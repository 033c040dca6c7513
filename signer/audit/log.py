"""Append-only, hash-chained audit log with group commit.

Fail closed: ``record`` returns only once the entries are committed; if they cannot be,
it raises ``AuditUnavailable`` and the caller returns no signature. The database runs in
WAL mode with ``synchronous=FULL``: every commit is fsync'd before it returns, so no
signature leaves before its entry would survive a power loss (not merely the writing
process being killed).

Many requests arrive at once; one writer thread commits whatever is pending in one
transaction (group commit), so the log costs one fsync per batch rather than per
request: callers that arrive while a commit's fsync runs join the next one. Both the
threaded path (``record``) and the event loop's (``record_async``) feed that one writer,
so the loop never waits on an fsync. Several worker processes share the chain: each
transaction takes the write lock (BEGIN IMMEDIATE) and reads the tip of the chain inside
it.

A full disk refuses writes (``AuditUnavailable``, "the disk ... is full") and the next
commit after space is freed succeeds: nothing to restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from enum import StrEnum
from pathlib import Path

from signer.errors import (
    AuditUnavailable,
    ConfigError,
    PermissionDenied,
    ResourceExhausted,
    SignerError,
    StorageUnavailable,
)
from signer.storage.sqlite import connect, is_disk_full, transaction

log = logging.getLogger(__name__)

AUDIT_ROLE = "audit"  # the registry role reserved for the audit (checkpoint) key
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


# One encoder, made once: ``json.dumps`` with options builds a new encoder per call.
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"))
_NOT_HASHED = frozenset(("seq", "prev_hash", "hash"))


def entry_hash(prev_hash: str, seq: int, event: dict[str, object]) -> str:
    """The chain link: sha256 over the previous hash, the sequence and the entry's fields.

    The material is ``json.dumps([prev_hash, seq, fields], sort_keys=True,
    separators=(",", ":"))``; the verifier recomputes exactly that.
    """
    body = {k: v for k, v in event.items() if k not in _NOT_HASHED}
    return hashlib.sha256(_ENCODER.encode([prev_hash, seq, body]).encode()).hexdigest()


def _fields_hash(prev_hash: str, seq: int, body: dict[str, object]) -> str:
    """``entry_hash`` for a dict that holds only the hashed fields (the writer's rows)."""
    return hashlib.sha256(_ENCODER.encode([prev_hash, seq, body]).encode()).hexdigest()


class _Pending:
    """Entries waiting to be committed, for a thread (``done``) or an event loop (``future``)."""

    __slots__ = ("done", "error", "events", "future", "loop", "seqs")

    def __init__(
        self,
        events: Sequence[AuditEvent],
        loop: asyncio.AbstractEventLoop | None = None,
        future: asyncio.Future[list[int]] | None = None,
    ) -> None:
        self.events = events
        self.loop = loop
        self.future = future
        self.done = threading.Event() if loop is None else None
        self.error: BaseException | None = None
        self.seqs: list[int] = []


def _settle(group: list[_Pending]) -> None:
    """On the event loop: resolve every waiter of one commit (one wake-up for them all)."""
    for pending in group:
        future = pending.future
        if future is None or future.done():
            continue
        if pending.error is None:
            future.set_result(pending.seqs)
        else:
            future.set_exception(_unavailable(pending.error))


def _unavailable(error: BaseException) -> AuditUnavailable:
    if is_disk_full(error):
        return AuditUnavailable(
            "the audit log could not be written: the disk is full; nothing was signed "
            "(retry once space is freed)"
        )
    return AuditUnavailable(f"the audit log could not be written ({error}); nothing was signed")


class AuditLog:
    """The chain's writer. ``synchronous``: SQLite's setting for commits (FULL: fsync'd).

    ``linger_seconds``: how long the writer waits for more callers before a commit when
    the previous commit carried more than one caller (under load); alone, it never waits.
    """

    def __init__(
        self, path: Path, *, synchronous: str = "FULL", linger_seconds: float = 0.0002
    ) -> None:
        self.path = path
        self.linger_seconds = linger_seconds
        try:
            self._conn = connect(path, synchronous=synchronous)
            self._conn.execute(_SCHEMA)
            self._conn.execute(_CHECKPOINT_SCHEMA)
        except (StorageUnavailable, sqlite3.DatabaseError) as exc:
            # Only the daemon's start-up opens the log: a clear message, not a traceback.
            cause = exc.__cause__ or exc
            raise ConfigError(
                f"cannot open the audit log {path}: {cause} (a damaged file, or not a "
                "database? check the state directory; see `signerd audit verify`)"
            ) from exc
        self._cv = threading.Condition()
        self._commit_lock = threading.Lock()
        self._queue: list[_Pending] = []
        self._stopped = False
        self._listeners: list[Callable[[int], object]] = []
        self.commits = 0  # statistics: transactions committed and the entries they held
        self.committed_entries = 0
        self.committed_callers = 0
        self._writer = threading.Thread(target=self._write_loop, name="audit-writer", daemon=True)
        self._writer.start()

    def record(self, *events: AuditEvent) -> list[int]:
        """Append events durably; return their sequence numbers. Raises AuditUnavailable."""
        pending = _Pending(events)
        self._enqueue(pending)
        assert pending.done is not None
        pending.done.wait()
        if pending.error is not None:
            raise _unavailable(pending.error) from pending.error
        return pending.seqs

    async def record_async(self, *events: AuditEvent) -> list[int]:
        """``record`` for the asyncio server: the loop hands the entries to the writer.

        The loop never waits for the fsync; every request that reaches this point while a
        commit is running joins the next transaction (one commit for many signatures).
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[int]] = loop.create_future()
        self._enqueue(_Pending(events, loop, future))
        return await future

    def _enqueue(self, pending: _Pending) -> None:
        with self._cv:
            if self._stopped:
                raise AuditUnavailable("the audit log is closed")
            self._queue.append(pending)
            self._cv.notify()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the audit database's write lock (all workers): e.g. to make the audit key
        exactly once. Nothing may be recorded meanwhile by the holder (it would wait)."""
        with self._commit_lock:
            conn = self._conn
            with transaction(conn):
                yield

    def on_commit(self, listener: Callable[[int], object]) -> None:
        """Call ``listener(last_seq)`` after each commit; it must return at once."""
        self._listeners.append(listener)

    def close(self) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify()
        self._writer.join(timeout=10)
        self._conn.close()
        if self.commits:
            log.info(
                "audit log closed: %d entries in %d commits (%.1f per commit)",
                self.committed_entries,
                self.commits,
                self.committed_entries / self.commits,
            )

    def _write_loop(self) -> None:
        batched = 1  # callers in the previous commit
        while True:
            with self._cv:
                while not self._queue and not self._stopped:
                    self._cv.wait()
                if self._queue and batched > 1 and self.linger_seconds > 0:
                    # Under load: let the callers that are on their way join this commit.
                    deadline = time.monotonic() + self.linger_seconds
                    while len(self._queue) < batched and not self._stopped:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        self._cv.wait(left)
                batch, self._queue = self._queue, []
                if not batch and self._stopped:
                    return
            batched = len(batch)
            try:
                self._commit(batch)
            except BaseException as exc:
                if is_disk_full(exc):
                    log.error("audit write refused, the disk holding %s is full", self.path)
                else:
                    log.exception("audit write failed")
                for pending in batch:
                    pending.error = exc
            waiting: dict[asyncio.AbstractEventLoop, list[_Pending]] = {}
            for pending in batch:
                if pending.loop is not None:
                    waiting.setdefault(pending.loop, []).append(pending)
                elif pending.done is not None:
                    pending.done.set()
            for loop, group in waiting.items():
                try:
                    loop.call_soon_threadsafe(_settle, group)
                except RuntimeError:  # the loop is closed: nobody waits any more
                    pass

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
        try:
            with transaction(conn):
                tip = conn.execute(
                    "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1"
                ).fetchone()
                seq, prev = (tip[0], tip[1]) if tip else (0, GENESIS)
                rows = []
                for pending in batch:
                    for event in pending.events:
                        seq += 1
                        body: dict[str, object] = dict(
                            zip(_FIELDS, astuple_flat(event), strict=True)
                        )
                        body["outcome"] = str(event.outcome)
                        digest = _fields_hash(prev, seq, body)
                        rows.append((*body.values(), seq, prev, digest))
                        pending.seqs.append(seq)
                        prev = digest
                if rows:
                    conn.executemany(_INSERT, rows)
        except BaseException:
            for pending in batch:
                pending.seqs.clear()
            if conn.in_transaction:  # the ROLLBACK failed too (disk full): try once more
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
        self.commits += 1
        self.committed_callers += len(batch)
        self.committed_entries += sum(len(p.events) for p in batch)


_INSERT = (
    f"INSERT INTO audit ({', '.join((*_FIELDS, 'seq', 'prev_hash', 'hash'))}) "
    f"VALUES ({', '.join('?' for _ in range(len(_FIELDS) + 3))})"
)


def last_signatures(path: Path) -> dict[str, float]:
    """Key ID -> time of the key's last signature (an allowed sign or sign-raw entry).

    A read on its own connection: what ``signer.notary.retire`` asks "unused since"."""
    conn = connect(path)
    try:
        rows = conn.execute(
            "SELECT key_id, max(time) FROM audit WHERE outcome = ? AND key_id != '' "
            "AND operation IN ('sign', 'sign-raw') GROUP BY key_id",
            (Outcome.ALLOWED.value,),
        ).fetchall()
    except sqlite3.Error as exc:
        raise StorageUnavailable(f"cannot read the audit log {path}: {exc}") from exc
    finally:
        conn.close()
    return {str(key_id): float(when) for key_id, when in rows}
