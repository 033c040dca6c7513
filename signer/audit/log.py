"""Append-only, hash-chained audit log with group commit.

Fail closed: ``record`` returns only once the entries are committed; if they cannot be,
it raises ``AuditUnavailable`` and the caller returns no signature. SQLite runs in
WAL mode with ``synchronous=FULL``: every commit is fsync'd before it returns, so no
signature leaves before its entry would survive a power loss (not merely the writing
process being killed).

Many requests arrive at once; one writer thread commits whatever is pending in one
transaction (group commit), so the log costs one fsync per batch rather than per
request: callers that arrive while a commit's fsync runs join the next one. Both the
threaded path (``record``) and the event loop's (``record_async``) feed that one writer,
so the loop never waits on an fsync. Several worker processes (and replicas) share the
chain: each append is one transaction of the store that takes its write lock and reads
the tip of the chain inside it (``signer.storage``).

A full disk refuses writes (``AuditUnavailable``, "the disk ... is full") and the next
commit after space is freed succeeds: nothing to restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from enum import StrEnum
from pathlib import Path

from signer.errors import (
    AuditUnavailable,
    PermissionDenied,
    ResourceExhausted,
    SignerError,
)
from signer.metrics import NO_METRICS, Observer
from signer.storage.interfaces import AuditChain
from signer.storage.sqlite import is_disk_full

log = logging.getLogger(__name__)

AUDIT_ROLE = "audit"  # the registry role reserved for the audit (checkpoint) key
GENESIS = "0" * 64


class Outcome(StrEnum):
    ALLOWED = "allowed"  # the operation was carried out
    DENIED = "denied"  # refused by policy or payload rules
    FAILED = "failed"  # allowed but could not be carried out (bad input, token fault)


def failure_outcome(exc: SignerError) -> Outcome:
    """A refusal (policy, rate limit) is DENIED; anything else that went wrong is FAILED."""
    return (
        Outcome.DENIED if isinstance(exc, PermissionDenied | ResourceExhausted) else Outcome.FAILED
    )


@dataclass(slots=True)  # not frozen: a frozen dataclass costs 4x more to make, per entry
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
# Fields added after the first release: part of the hashed material only when non-empty,
# so a chain written before them (or by a daemon that leaves them empty) hashes as it did.
OPTIONAL_FIELDS = frozenset(("replica",))


def entry_hash(prev_hash: str, seq: int, event: dict[str, object]) -> str:
    """The chain link: sha256 over the previous hash, the sequence and the entry's fields.

    The material is ``json.dumps([prev_hash, seq, fields], sort_keys=True,
    separators=(",", ":"))``, where ``fields`` leaves out an empty ``replica`` (entries
    from before replicas were named); the verifier recomputes exactly that.
    """
    body = {
        k: v
        for k, v in event.items()
        if k not in _NOT_HASHED and not (k in OPTIONAL_FIELDS and not v)
    }
    return hashlib.sha256(_ENCODER.encode([prev_hash, seq, body]).encode()).hexdigest()


_quote = json.encoder.encode_basestring_ascii  # what ``_ENCODER`` does to a str (C)


# An entry's hashed fields but two, encoded: the text before the payload_sha256 value and
# the text between it and the time. The entries of one SignBatch differ only in those two.
_Shape = tuple[str, str]


def _shape(event: AuditEvent, outcome: str, replica: str) -> _Shape:
    q = _quote
    named = f'"replica":{q(replica)},' if replica else ""
    return (
        f'{{"code":{q(event.code)},"detail":{q(event.detail)},"key_id":{q(event.key_id)},'
        f'"operation":{q(event.operation)},"outcome":{q(outcome)},"payload_sha256":',
        f',"principal":{q(event.principal)},{named}"repository":{q(event.repository)},'
        f'"request_id":{q(event.request_id)},"role":{q(event.role)},"time":',
    )


def _body_json(
    event: AuditEvent, outcome: str, replica: str, shapes: dict[tuple[str, ...], _Shape]
) -> str:
    """``_ENCODER.encode`` of the entry's hashed fields (``entry_hash``'s ``fields``),
    spelled out in ``sort_keys`` order: the same bytes at a fraction of the cost, the
    fields shared with an earlier entry of the commit (``shapes``) encoded once. A value
    the fast path does not know (a time that is not finite, a field that is not a str)
    takes the encoder."""
    when = float(event.time)  # the column is REAL: an int reads back as a float
    try:
        if not math.isfinite(when):
            raise TypeError(when)
        key = (
            event.code,
            event.detail,
            event.key_id,
            event.operation,
            outcome,
            event.principal,
            event.repository,
            event.request_id,
            event.role,
        )
        shape = shapes.get(key)
        if shape is None:
            shape = shapes[key] = _shape(event, outcome, replica)
        return f"{shape[0]}{_quote(event.payload_sha256)}{shape[1]}{when!r}}}"
    except TypeError:
        body: dict[str, object] = dict(zip(_FIELDS, astuple_flat(event), strict=True))
        body["outcome"], body["time"] = outcome, when
        if replica:
            body["replica"] = replica
        return _ENCODER.encode(body)


def _link(prev_hash: str, seq: int, body_json: str) -> str:
    """``entry_hash`` from the body's encoding: ``[prev_hash, seq, body]`` as the encoder
    writes it (``separators=(",", ":")``)."""
    return hashlib.sha256(f"[{_quote(prev_hash)},{seq:d},{body_json}]".encode()).hexdigest()


def _row(
    seq: int, event: AuditEvent, outcome: str, replica: str, prev: str, digest: str
) -> tuple[object, ...]:
    """The entry as a row of AUDIT_COLUMNS (in that order: a test holds it to it)."""
    return (
        seq,
        float(event.time),
        event.principal,
        event.operation,
        event.key_id,
        event.role,
        event.repository,
        event.payload_sha256,
        outcome,
        event.code,
        event.detail,
        event.request_id,
        replica,
        prev,
        digest,
    )


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
    """The chain's writer over an ``AuditChain`` store (``signer.storage``).

    A path opens the SQLite chain there, ``synchronous`` its setting for commits (FULL:
    fsync'd). ``linger_seconds``: how long the writer waits for more callers before a
    commit when the previous commit carried more than one caller (under load); alone, it
    never waits. ``replica``: the name each entry records (``[state] replica``: which
    replica of a shared chain wrote it); empty, entries hash as before replicas.
    ``metrics``: told each commit's time and the callers waiting for the next one.
    """

    def __init__(
        self,
        chain: AuditChain | Path,
        *,
        synchronous: str = "FULL",
        linger_seconds: float = 0.0002,
        replica: str = "",
        metrics: Observer = NO_METRICS,
    ) -> None:
        if isinstance(chain, Path):
            from signer.storage.sqlite.audit import SqliteAuditChain

            chain = SqliteAuditChain(chain, synchronous=synchronous)
        self.chain = chain
        self.linger_seconds = linger_seconds
        self.replica = replica
        self.metrics = metrics
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
        with self._commit_lock, self.chain.exclusive():
            yield

    def on_commit(self, listener: Callable[[int], object]) -> None:
        """Call ``listener(last_seq)`` after each commit; it must return at once."""
        self._listeners.append(listener)

    def close(self) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify()
        self._writer.join(timeout=10)
        self.chain.close()
        if self.commits:
            log.info(
                "audit log closed: %d entries in %d commits (%.1f per commit) from %d callers",
                self.committed_entries,
                self.commits,
                self.committed_entries / self.commits,
                self.committed_callers,
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
                    log.error("audit write refused, the disk holding %s is full", self.chain.where)
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
        started = time.perf_counter()
        with self._commit_lock:
            self._commit_locked(batch)
        self.metrics.audit_committed(time.perf_counter() - started, len(self._queue))
        last = max((s for p in batch for s in p.seqs), default=0)
        for listener in self._listeners:  # e.g. the checkpointer: wakes, never blocks
            try:
                listener(last)
            except Exception:
                log.exception("audit commit listener failed")

    def _commit_locked(self, batch: list[_Pending]) -> None:
        replica = self.replica

        # Each entry's hashed fields, encoded once: they do not depend on the tip.
        bodies = []
        shapes: dict[tuple[str, ...], _Shape] = {}
        for pending in batch:
            for event in pending.events:
                outcome = str(event.outcome)
                body = _body_json(event, outcome, replica, shapes)
                bodies.append((pending, event, outcome, body))

        def build(tip: tuple[int, str] | None) -> list[tuple[object, ...]]:
            seq, prev = tip if tip else (0, GENESIS)
            rows = []
            for pending in batch:
                pending.seqs.clear()  # a retried build (serialization failure) starts over
            for pending, event, outcome, body_json in bodies:
                seq += 1
                digest = _link(prev, seq, body_json)
                rows.append(_row(seq, event, outcome, replica, prev, digest))
                pending.seqs.append(seq)
                prev = digest
            return rows

        try:
            self.chain.append(build)
        except BaseException:
            for pending in batch:
                pending.seqs.clear()
            raise
        self.commits += 1
        self.committed_callers += len(batch)
        self.committed_entries += sum(len(p.events) for p in batch)


def last_signatures(source: AuditLog | AuditChain | Path) -> dict[str, float]:
    """Key ID -> time of the key's last signature (an allowed sign or sign-raw entry).

    What ``signer.notary.retire`` asks "unused since"; a path reads the SQLite chain."""
    if isinstance(source, AuditLog):
        return source.chain.last_signatures()
    if isinstance(source, Path):
        from signer.storage.sqlite.audit import SqliteAuditChain

        chain = SqliteAuditChain(source, synchronous="NORMAL")
        try:
            return chain.last_signatures()
        finally:
            chain.close()
    return source.last_signatures()
