"""What the daemon asks of its state: one small protocol per store, for every backend.

The daemon's logic (caches, rules, messages) stays with its callers; a store only reads
and writes, and does in one transaction what must be atomic across every process and
replica sharing the state (a version claim, an approval, a bucket take, an audit append).
Every method raises ``StorageUnavailable`` (UNAVAILABLE) when the state cannot be read or
written; inline on the event loop (``signer.storage.sqlite.inline_or_thread``) a store
may raise ``WouldBlock`` before changing anything instead of waiting.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from signer.storage.records import (
    KeyRecord,
    KeyState,
    NotaryKey,
    SignatureRequest,
    VersionClaim,
)

# The audit table's columns, in the order ``signerd audit export`` and the verifier use.
# ``replica``: the replica that wrote the entry (``[state] replica``), added after the
# first release: hashed only when non-empty (``signer.audit.log.entry_hash``), and read
# as "" from a chain made before it.
AUDIT_COLUMNS = (
    "seq",
    "time",
    "principal",
    "operation",
    "key_id",
    "role",
    "repository",
    "payload_sha256",
    "outcome",
    "code",
    "detail",
    "request_id",
    "replica",
    "prev_hash",
    "hash",
)


class KeyStore(Protocol):
    """Key records (the key registry's table)."""

    def add(self, record: KeyRecord) -> None:
        """Insert ``record``; AlreadyExists if its key_id or object_id is taken."""
        ...

    def get(self, key_id: str) -> KeyRecord | None: ...

    def find(
        self,
        role: str = "",
        repository: str = "",
        state: str = "",
        after: tuple[float, str] | None = None,
        limit: int | None = None,
    ) -> list[KeyRecord]:
        """The records matching every non-empty filter, oldest first (by created_at, then
        key_id); with ``after`` only those past that (created_at, key_id), at most ``limit``:
        a page of ListKeys that stays put while keys are added."""
        ...

    def set_state(
        self, key_id: str, state: KeyState, retired_at: float | None, destroyed_at: float | None
    ) -> None:
        """Set the state; a None timestamp keeps the one recorded."""
        ...

    def set_certificate(self, key_id: str, certificate_pem: str) -> None: ...

    def count_by_state(self) -> dict[str, int]:
        """State -> how many keys are in it (the metrics' key counts)."""
        ...

    def changed(self) -> bool:
        """True if anyone (another worker, another replica) may have changed a record
        since the last call: the registry then drops its cache. Cheap: once a request."""
        ...

    def close(self) -> None: ...


class VersionClaims(Protocol):
    """The last TUF version each key signed for a role (anti-rollback)."""

    def claim(self, claim: VersionClaim, now: float) -> tuple[int, str] | None:
        """Record ``claim`` unless it goes back or forks; one transaction.

        Returns None when recorded (or identical to the latest), else the latest
        (version, payload_sha256) that refuses it, writing nothing."""
        ...

    def claim_many(
        self, claims: Sequence[VersionClaim], now: float
    ) -> list[tuple[int, str] | None]:
        """``claim`` for each of ``claims`` (a group of concurrent requests), in as few
        round trips as the store allows; each answer as ``claim``'s."""
        ...

    def last(self, key_id: str, role: str) -> tuple[int, str] | None: ...

    def close(self) -> None: ...


class QuorumRequests(Protocol):
    """Signature requests and their approvals (states as written, not as expired)."""

    def add(self, request: SignatureRequest) -> None: ...

    def get(self, request_id: str) -> SignatureRequest | None: ...

    def approve(
        self,
        request_id: str,
        approver: str,
        now: float,
        check: Callable[[SignatureRequest | None], None],
    ) -> SignatureRequest | None:
        """One transaction: ``check`` the current request (it may raise: nothing is
        written), add the approval, mark it approved once it has enough; the result."""
        ...

    def claim(self, request_id: str, now: float) -> bool:
        """Mark an approved, unexpired request fulfilled: true for one caller only."""
        ...

    def open_counts(self, now: float) -> dict[str, int]:
        """State (pending, approved) -> how many requests in it are unexpired at ``now``."""
        ...

    def close(self) -> None: ...


class NotaryKeys(Protocol):
    """Notary key ID -> registry key: rows never change once written."""

    def add(self, key: NotaryKey, now: float) -> None: ...

    def get(self, notary_id: str) -> NotaryKey | None: ...

    def all(self) -> list[NotaryKey]: ...

    def close(self) -> None: ...


class Buckets(Protocol):
    def take(self, name: str, rate: float, burst: float, n: float) -> float:
        """Spend ``n`` tokens of ``name``'s bucket and return 0.0, or spend nothing and
        return the seconds until ``n`` tokens will be there."""
        ...

    def close(self) -> None: ...


# Builds the rows to append (tuples in AUDIT_COLUMNS order) from the chain's tip (seq,
# hash), None for an empty chain: called inside the append transaction, so the rows link
# to the tip everyone sees.
RowBuilder = Callable[[tuple[int, str] | None], Sequence[tuple[Any, ...]]]


class AuditChain(Protocol):
    """The hash-chained audit table and its checkpoints."""

    where: str  # the database, as messages name it

    def append(self, build: RowBuilder) -> None:
        """One durable transaction: read the tip, append ``build(tip)``."""
        ...

    def exclusive(self) -> contextlib.AbstractContextManager[None]:
        """Hold the chain's write lock (every process and replica) meanwhile."""
        ...

    def tip(self) -> tuple[int, str] | None: ...

    def last_checkpoint(self) -> tuple[int, float] | None:
        """(seq, time) of the latest checkpoint."""
        ...

    def add_checkpoint(
        self, seq: int, tip_hash: str, when: float, key_id: str, body: str, signature: str
    ) -> int | None:
        """Store a checkpoint; its id, or None if one for ``seq`` exists already."""
        ...

    def last_signatures(self) -> dict[str, float]:
        """Key ID -> time of its last allowed sign or sign-raw entry."""
        ...

    def close(self) -> None: ...


class AuditReader(Protocol):
    """A read-only view of an audit chain for ``signerd audit verify`` and ``export``."""

    where: str

    def snapshot(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
        """Every entry and checkpoint (id, seq, hash, key_id, body, signature), from one
        consistent snapshot; None for the checkpoints of a chain that has no table."""
        ...

    def entries(self, since: int = 0) -> Iterator[dict[str, Any]]: ...

    def audit_keys(self, role: str) -> list[tuple[str, str]]:
        """(key_id, tuf_key_json) of the registered keys with ``role``."""
        ...
