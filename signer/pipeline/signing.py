"""The signing pipeline: rate limit -> policy -> guards -> token -> audit -> release.

The order is the security argument: nothing reaches the token before the key is known,
usable and the principal authorised and the payload passed its guards; no signature
leaves before its audit entry is committed; every item, signed or refused, leaves one
audit entry, committed together in one group commit.

Requests that arrive together are signed together: ``sign`` queues the request and one
drain task takes whatever is queued (up to ``INLINE_ITEMS`` items) as a group: one
registry refresh, one token call and one audit commit for the group, while the next group
gathers behind it. Alone, a request is taken at once (no added wait); under load the
group grows with the commit it waits behind, so the per-request costs (a cold-cache
token signature ~130 us against ~60 us in a run, the commit hand-off, the refresh) are
shared. Each request keeps its own principal, policy, rate limit and refusals. A group
that waits for a lock another process holds on a state database (its check runs in a
thread meanwhile) is left to finish on its own after ``GROUP_PATIENCE_SECONDS``, and the
requests queued behind it go on.

On the asyncio server every stage runs inline (no thread hop on the hot path) unless a
store it touches would wait for a lock: then that stage re-runs in a thread
(``inline_or_thread``). The token call stays inline for small batches (a thread hop
costs more CPU than a SoftHSM signature); a hung token call is detected by the token's
watchdog thread (``Token``'s ``hang_seconds``), which marks the token broken (health
NOT_SERVING, once the loop answers again) and re-opens the session: docs/operating.md.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from signer.audit import AuditEvent
from signer.errors import InvalidArgument, ResourceExhausted, ServiceError, SignerError
from signer.identity import Principal
from signer.pipeline.admission import check_payload, check_usable, resource_of, take_rate
from signer.pipeline.auditing import (
    Recorder,
    allowed_event,
    failure_event,
    mark_audited,
)
from signer.pipeline.guards import Signed, SignGuard, SignInput, check_each, stricter
from signer.policy import Operation, Policy, Resource
from signer.registry import KeyRecord, KeyRegistry
from signer.storage.sqlite import inline_or_thread, waiting_forbidden
from signer.token import SignItem, Token

log = logging.getLogger(__name__)

INLINE_ITEMS = 64  # larger batches hold the token a while: keep the event loop free
# A group still running after this long (waiting for a lock another process holds) no
# longer holds up the requests queued behind it.
GROUP_PATIENCE_SECONDS = 0.05
# While a group waits for its audit commit (an fsync), the next one may use the token if
# this many items are queued: full batches overlap their commits with the next group's
# signatures; a few unary requests rather wait and join a larger group.
OVERLAP_ITEMS = 16


class _Prepared(NamedTuple):  # a tuple: made per item, 4x cheaper than a frozen dataclass
    at: int  # the item's index in its request
    key: KeyRecord
    resource: Resource  # the key's, as authorised and audited
    item: SignInput
    payload_sha256: str
    detail: str  # for the audit entry
    tbs: bytes  # what the token signs
    operation: Operation  # the grant it needed: sign or sign-raw (for the audit entry)


def _what_is_signed(item: SignInput) -> tuple[str, str]:
    """The audit entry's ``payload_sha256`` and ``detail`` for an item: the payload's
    SHA-256, or the digest sent (a SHA-256 digest is the artefact's SHA-256; any other
    size is named in the detail), so the log says what each signature covers."""
    if item.payload:
        return hashlib.sha256(item.payload).hexdigest(), item.detail
    if item.digest:
        if len(item.digest) == 32:
            return item.digest.hex(), item.detail
        return "", f"digest {item.digest[:128].hex()}"
    return "", item.detail


def _to_be_signed(key: KeyRecord, item: SignInput) -> bytes:
    """What the token signs for the item: its digest as given, or the payload's."""
    alg = key.algorithm
    if item.payload is not None:
        return alg.to_be_signed(item.payload)
    return alg.check_digest(item.digest) if item.digest is not None else b""


def _worded(exc: Exception) -> SignerError:
    """A check's failure as the item's refusal: a SignerError as it is, a payload a
    parser choked on as INVALID_ARGUMENT, anything else a bug that costs one item."""
    if isinstance(exc, SignerError):
        return exc
    if isinstance(exc, RecursionError | ValueError | TypeError | OverflowError):
        return InvalidArgument(f"the payload cannot be checked: {exc}")
    log.error("unexpected error checking a sign request", exc_info=exc)
    return ServiceError("internal error checking this item; see the daemon's log")


@dataclass
class _Batch:
    """One request between its checks and its release."""

    principal: Principal
    operation: str
    items: Sequence[SignInput]
    results: list[Signed | SignerError | None]
    prepared: list[_Prepared] = field(default_factory=list)
    refusals: list[tuple[int, AuditEvent]] = field(default_factory=list)
    signed: list[tuple[_Prepared, bytes]] = field(default_factory=list)

    def refuse(
        self,
        index: int,
        resource: Resource,
        exc: SignerError,
        digest: str,
        detail: str,
        operation: Operation | None = None,
    ) -> None:
        self.results[index] = exc
        name = operation.value if operation is not None else self.operation
        event = failure_event(
            self.principal, name, resource, exc, digest, self.items[index].request_id, detail
        )
        self.refusals.append((index, event))

    def refuse_prepared(self, p: _Prepared, exc: SignerError) -> None:
        """Refuse an item that got past its authorisation (its key and grant known)."""
        self.refuse(p.at, p.resource, exc, p.payload_sha256, p.detail, p.operation)


@dataclass
class _Queued:
    """A request waiting for its group: what it was admitted under, and who waits."""

    policy: Policy
    batch: _Batch
    future: asyncio.Future[list[Signed | SignerError]]

    def settle(
        self, result: list[Signed | SignerError] | None, error: BaseException | None = None
    ) -> None:
        if self.future.done():  # the caller went away (cancelled): nobody to tell
            return
        if error is not None:
            self.future.set_exception(error)
        else:
            self.future.set_result(result or [])


class Pipeline:
    """The one signing path: signer_api.v1 Sign/SignBatch/digests/quorum and notary Sign."""

    def __init__(
        self,
        token: Token,
        registry: KeyRegistry,
        recorder: Recorder,
        policy: Callable[[], Policy],
        max_payload_bytes: int,
        guards: Sequence[SignGuard] = (),
    ) -> None:
        self.token = token
        self.registry = registry
        self.recorder = recorder
        self.policy = policy  # the current policy: it may be reloaded (SIGHUP)
        self.max_payload_bytes = max_payload_bytes
        self.guards = tuple(guards)
        self._queue: deque[_Queued] = deque()
        self._drainer: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Task[None]] = set()  # groups the drain has moved past

    async def sign(
        self, principal: Principal, items: Sequence[SignInput], operation: str = "sign"
    ) -> list[Signed | SignerError]:
        """Sign each item; per-item refusals are returned, never raised.

        Raises ResourceExhausted (over the rate limit: nothing signed), AuditUnavailable
        or TokenUnavailable (nothing returned); each raised error is already audited.
        """
        policy = self.policy()  # one policy for the whole request, even across a reload
        batch = _Batch(principal, operation, items, [None] * len(items))
        if len(items) > INLINE_ITEMS:
            return await self._sign_alone(policy, batch)
        loop = asyncio.get_running_loop()
        queued = _Queued(policy, batch, loop.create_future())
        self._queue.append(queued)
        drainer = self._drainer
        if drainer is None or drainer.done() or drainer.get_loop() is not loop:
            self._drainer = loop.create_task(self._drain())
        return await queued.future

    async def _sign_alone(self, policy: Policy, batch: _Batch) -> list[Signed | SignerError]:
        """A large batch: its checks and token call run in a thread (the loop stays free)."""
        refusal = await self._over_rate(policy, batch)
        if refusal is not None:
            event, error = refusal
            await self.recorder.refusals_async([event], [error])
            raise error
        token_error = await asyncio.to_thread(self._check_and_sign, policy, batch)
        return self._release(batch, await self._audit([batch], token_error))

    async def _drain(self) -> None:
        """Take the queue group by group until it is empty (one drain task per loop).

        Each group is waited for, so the next one gathers meanwhile, until its token
        call is done and it waits for its commit: then, with ``OVERLAP_ITEMS`` queued,
        the next group starts (the token works during the fsync). A group still running
        after ``GROUP_PATIENCE_SECONDS`` (a check waiting in a thread for a lock another
        process holds) is left to finish on its own, and the queue goes on."""
        loop = asyncio.get_running_loop()
        while self._queue:
            group: list[_Queued] = []
            size = 0
            while self._queue and (
                not group or size + len(self._queue[0].batch.items) <= INLINE_ITEMS
            ):
                queued = self._queue.popleft()
                group.append(queued)
                size += len(queued.batch.items)
            signed = loop.create_future()
            task = loop.create_task(self._sign_group_safely(group, signed))
            try:
                await self._wait_for_group(task, signed)
            except BaseException:  # cancelled (the server stops): tell every waiter
                task.cancel()
                for queued in self._queue:
                    queued.settle(None, asyncio.CancelledError())
                self._queue.clear()
                raise
            if not task.done():  # overlapping its commit, or a straggler
                self._in_flight.add(task)  # a reference until it ends
                task.add_done_callback(self._in_flight.discard)

    async def _wait_for_group(self, task: asyncio.Task[None], signed: asyncio.Future[None]) -> None:
        """Until the group ends, or has signed with enough queued behind it, or is still
        running after ``GROUP_PATIENCE_SECONDS``."""
        deadline = asyncio.get_running_loop().time() + GROUP_PATIENCE_SECONDS
        waiting: set[asyncio.Future[None]] = {task, signed}
        while not task.done():
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return
            await asyncio.wait(waiting, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            if signed.done():
                waiting.discard(signed)
                if self._queued_items() >= OVERLAP_ITEMS:
                    return  # its commit goes on; the token takes the next group

    def _queued_items(self) -> int:
        total = 0
        for queued in self._queue:
            total += len(queued.batch.items)
            if total >= OVERLAP_ITEMS:
                break
        return total

    async def _sign_group_safely(self, group: list[_Queued], signed: asyncio.Future[None]) -> None:
        """``_sign_group``; whatever happens, every caller of the group gets an answer."""
        try:
            await self._sign_group(group, signed)
        except Exception as exc:  # a bug: it costs this group, and nobody waits forever
            log.exception("unexpected error in a signing group")
            for queued in group:
                queued.settle(None, exc)
        except BaseException:
            for queued in group:
                queued.settle(None, asyncio.CancelledError())
            raise

    async def _sign_group(self, group: list[_Queued], signed: asyncio.Future[None]) -> None:
        admitted, refused = [], []
        for queued in group:
            refusal = await self._over_rate(queued.policy, queued.batch)
            if refusal is None:
                admitted.append(queued)
            else:
                refused.append((queued, refusal))
        if refused:  # one commit for the group's refusals: a flood is not one commit each
            events = [event for _, (event, _) in refused]
            await self.recorder.refusals_async(events, [error for _, (_, error) in refused])
            for queued, (_, error) in refused:
                queued.settle(None, error)
        if not admitted:
            return
        try:
            await inline_or_thread(self.registry.refresh)  # once per group, not per item
        except SignerError as exc:
            for queued in admitted:  # unaudited: the service layer records each request
                queued.settle(None, exc)
            return
        work = [
            (queued.policy, queued.batch, index, item)
            for queued in admitted
            for index, item in enumerate(queued.batch.items)
        ]
        await inline_or_thread(self._prepare_items, work, [0])  # one thread hop at most
        batches = [queued.batch for queued in admitted]
        token_error = self._sign_in_token(batches)
        signed.set_result(None)  # the token is free for the next group
        try:
            seqs = await self._audit(batches, token_error)
        except SignerError as exc:
            for queued in admitted:
                if exc is token_error and not queued.batch.prepared:
                    # Refused before the token (its entries say why): that answer stands.
                    queued.settle([r for r in queued.batch.results if r is not None])
                else:
                    queued.settle(None, exc)
            return
        at = 0
        for queued in admitted:
            batch = queued.batch
            n = len(batch.refusals) + len(batch.signed)
            queued.settle(self._release(batch, seqs[at : at + n]))
            at += n

    async def _over_rate(
        self, policy: Policy, batch: _Batch
    ) -> tuple[AuditEvent, SignerError] | None:
        """The rate limit: when the request is over it, the refusal's entry (for the
        caller to record) and the error to answer with."""
        try:
            await inline_or_thread(take_rate, policy, batch.principal, len(batch.items))
        except ResourceExhausted as exc:
            self.recorder.metrics.rate_limited(exc.error_reason)
            return await self._whole_refusal(batch, exc), exc
        return None

    async def _audit(self, batches: list[_Batch], token_error: SignerError | None) -> list[int]:
        """Commit every entry of the batches in one transaction. Raises the token fault
        (its refusals recorded) or AuditUnavailable (nothing could be recorded)."""
        events = [event for batch in batches for event in self._events(batch)]
        if token_error is not None:
            await self.recorder.refusals_async(events, [token_error])
            raise token_error
        try:
            return await self.recorder.record_async(*events)
        except SignerError as exc:
            mark_audited(exc)  # the log itself is down: nothing more can be recorded
            raise

    # -- stages ------------------------------------------------------------------------------

    def _check_and_sign(self, policy: Policy, batch: _Batch) -> SignerError | None:
        self.registry.refresh()
        self._prepare_items([(policy, batch, i, item) for i, item in enumerate(batch.items)], [0])
        return self._sign_in_token([batch])

    def _prepare_items(
        self, work: Sequence[tuple[Policy, _Batch, int, SignInput]], cursor: list[int]
    ) -> None:
        """Check the items from ``cursor[0]`` on. Run again after WouldBlock (in a thread),
        it goes on where the inline run stopped: no item is checked twice, and a store
        that would wait (PostgreSQL, a locked SQLite file) costs one thread hop per group,
        not one per item."""
        if not waiting_forbidden():  # in a thread: a store may be asked for the group at once
            self._prepare_together(work[cursor[0] :])
            cursor[0] = len(work)
            return
        while cursor[0] < len(work):
            policy, batch, index, item = work[cursor[0]]
            prepared = self._prepare_one(policy, batch, index, item)
            if prepared is not None:
                batch.prepared.append(prepared)
            cursor[0] += 1

    def _prepare_together(self, work: Sequence[tuple[Policy, _Batch, int, SignInput]]) -> None:
        """The checks of ``_prepare_one`` stage by stage over the group: every item is
        authorised, then each guard checks every item still standing (``check_each``:
        the TUF version claims of the group in one round trip), then what the token signs.
        Off the event loop only (a guard may wait for its store)."""
        standing = []
        for policy, batch, index, item in work:
            admitted = self._prepare_one(policy, batch, index, item, guards=False)
            if admitted is not None:
                standing.append((policy, batch, admitted))
        for guard in self.guards:
            if not standing:
                return
            answers = check_each(
                guard, [(b.principal, p.key, p.item, policy) for policy, b, p in standing]
            )
            kept = []
            for entry, exc in zip(standing, answers, strict=True):
                if exc is None:
                    kept.append(entry)
                    continue
                _, batch, p = entry
                batch.refuse_prepared(p, _worded(exc))
            standing = kept
        for _, batch, p in standing:
            try:
                batch.prepared.append(p._replace(tbs=_to_be_signed(p.key, p.item)))
            except Exception as exc:
                batch.refuse_prepared(p, _worded(exc))

    def _prepare_one(
        self, policy: Policy, batch: _Batch, index: int, item: SignInput, guards: bool = True
    ) -> _Prepared | None:
        """Check one item; a refusal is noted in the batch (and audited with it). Without
        ``guards``, only up to its authorisation (no guard checks, nothing to sign yet)."""
        digest, detail = _what_is_signed(item)
        try:
            try:
                return self._prepare(policy, batch.principal, index, item, digest, detail, guards)
            except SignerError:
                raise
            except Exception as exc:
                raise _worded(exc) from exc
        except SignerError as exc:
            key, operation = getattr(exc, "key", None), getattr(exc, "operation", None)
            resource = (
                resource_of(key) if isinstance(key, KeyRecord) else Resource(item.key_id[:256])
            )
            batch.refuse(index, resource, exc, digest, detail, operation)
            return None

    def _prepare(
        self,
        policy: Policy,
        principal: Principal,
        index: int,
        item: SignInput,
        digest: str,
        detail: str,
        guards: bool = True,
    ) -> _Prepared:
        if not item.key_id:
            raise InvalidArgument("key_id is required")
        if item.payload is None and item.digest is None:
            raise InvalidArgument("send a payload or a digest to sign")
        if item.payload is not None and item.digest is not None:
            raise InvalidArgument("send a payload or a digest, not both")
        if item.payload is not None:
            check_payload(item.payload, self.max_payload_bytes)
        key = self.registry.get(item.key_id, refresh=False)  # refreshed once per request
        operation = Operation.SIGN if item.digest is None else Operation.SIGN_RAW
        resource = resource_of(key)
        try:
            for guard in self.guards:
                if operation is Operation.SIGN_RAW:
                    break  # the strongest grant already: no guard can raise it further
                operation = stricter(operation, guard.operation(key, item))
            # Authorise first: a principal who may not sign learns nothing from the guards.
            policy.authorize(principal, operation, resource)
            check_usable(key)
            if not guards:
                return _Prepared(index, key, resource, item, digest, detail, b"", operation)
            for guard in self.guards:  # in order: the last ones record state (versions, claims)
                guard.check(principal, key, item, policy)
            tbs = _to_be_signed(key, item)
        except SignerError as exc:
            exc.key = key  # type: ignore[attr-defined]  # for the refusal's audit entry
            exc.operation = operation  # type: ignore[attr-defined]
            raise
        return _Prepared(index, key, resource, item, digest, detail, tbs, operation)

    def _sign_in_token(self, batches: Sequence[_Batch]) -> SignerError | None:
        """One token call for every prepared item. A token fault refuses them all."""
        prepared = [(batch, p) for batch in batches for p in batch.prepared]
        if not prepared:
            return None
        try:
            raw = self.token.sign_many(
                [SignItem(p.key.object_id, p.key.algorithm, p.tbs) for _, p in prepared]
            )
        except SignerError as exc:
            for batch, p in prepared:
                batch.refuse_prepared(p, exc)
            return exc
        for (batch, p), signature in zip(prepared, raw, strict=True):
            if isinstance(signature, bytes):
                batch.signed.append((p, signature))
                continue
            error = (
                signature
                if isinstance(signature, SignerError)
                else ServiceError(f"the token failed to sign: {signature}")
            )
            batch.refuse_prepared(p, error)
        return None

    def _events(self, batch: _Batch) -> list[AuditEvent]:
        """Every item's entry, in item order: signatures and refusals in one commit."""
        principal = str(batch.principal)
        allowed = [
            allowed_event(
                principal,
                p.operation.value,
                p.resource,
                p.payload_sha256,
                p.detail,
                p.item.request_id,
            )
            for p, _ in batch.signed
        ]
        if not batch.refusals:  # signed in item order: nothing to interleave
            return allowed
        entries = list(batch.refusals)
        entries.extend(zip([p.at for p, _ in batch.signed], allowed, strict=True))
        entries.sort(key=lambda entry: entry[0])
        for result in batch.results:
            if isinstance(result, SignerError):
                mark_audited(result)
        return [event for _, event in entries]

    def _release(self, batch: _Batch, seqs: Sequence[int]) -> list[Signed | SignerError]:
        """After the audit entries are committed: hand out the signatures."""
        order = [p.at for p, _ in batch.signed]
        if batch.refusals:
            order = sorted([i for i, _ in batch.refusals] + order)
        seq_of = dict(zip(order, seqs, strict=True))
        counted: dict[tuple[str, str], int] = {}
        results = batch.results
        for p, signature in batch.signed:
            key = p.key
            for guard in self.guards:
                try:  # the signature is audited: bookkeeping must not withhold it
                    guard.signed(batch.principal, key, p.item)
                except Exception:
                    log.exception("after signing with key %s", key.key_id)
            labels = (key.algorithm_name, key.role)
            counted[labels] = counted.get(labels, 0) + 1
            alg = key.algorithm
            results[p.at] = Signed(
                key.key_id, alg.encode_signature(signature), signature, alg.scheme, seq_of[p.at]
            )
        for (algorithm, role), n in counted.items():
            self.recorder.metrics.signed(algorithm, role, n)
        return [r for r in results if r is not None]

    async def _whole_refusal(self, batch: _Batch, exc: SignerError) -> AuditEvent:
        """A request refused as a whole (rate limit) has one entry, not one per item."""
        key_ids = {item.key_id for item in batch.items}
        key_id = key_ids.pop() if len(key_ids) == 1 else ""
        payload = batch.items[0].payload if len(batch.items) == 1 else None
        digest = hashlib.sha256(payload).hexdigest() if payload else ""
        resource = await inline_or_thread(self._resource, key_id)
        return failure_event(batch.principal, batch.operation, resource, exc, digest)

    def _resource(self, key_id: str) -> Resource:
        """The key's role and repository for a refusal's entry, if the key exists."""
        try:
            return resource_of(self.registry.get(key_id)) if key_id else Resource()
        except SignerError:
            return Resource(key_id[:256])
