"""The key registry: what the daemon knows about each key, cached per process.

The token holds the key material and is the source of truth for it; the registry maps a
TUF key_id to the token object id and keeps the metadata the token cannot (role,
repository, state, timestamps), in a ``KeyStore`` (``signer.storage``). Several worker
processes, and replicas, share that store, so reads are cached and the cache is dropped
whenever the store says someone else changed it (``KeyStore.changed``, checked once per
request), which makes a retirement visible to every worker at once.
"""

from __future__ import annotations

import time
from dataclasses import replace

from signer.errors import NotFound, shown
from signer.storage.interfaces import KeyStore
from signer.storage.records import KeyRecord, KeyState

__all__ = ["KeyRecord", "KeyRegistry", "KeyState"]


class KeyRegistry:
    """Key records in a ``KeyStore``, cached per process.

    ``refresh()`` checks once whether anyone else changed the store and drops the cache
    if so; ``get(key_id, refresh=False)`` then serves from the cache, so a batch of many
    items pays for one check.
    """

    def __init__(self, store: KeyStore) -> None:
        self._store = store
        self._cache: dict[str, KeyRecord] = {}

    def close(self) -> None:
        self._store.close()

    def add(self, record: KeyRecord) -> KeyRecord:
        record = replace(record, created_at=record.created_at or time.time())
        self._store.add(record)
        self._cache[record.key_id] = record
        return record

    def refresh(self) -> None:
        """Drop the cache if another worker or replica changed the store since."""
        if self._store.changed():
            self._cache.clear()

    def get(self, key_id: str, refresh: bool = True) -> KeyRecord:
        if refresh:
            self.refresh()
        record = self._cache.get(key_id)
        if record is not None:
            return record
        record = self._store.get(key_id)
        if record is None:
            raise NotFound(f"no key with key_id {shown(key_id)}")
        self._cache[key_id] = record
        return record

    def find(
        self,
        role: str = "",
        repository: str = "",
        state: str = "",
        after: tuple[float, str] | None = None,
        limit: int | None = None,
    ) -> list[KeyRecord]:
        """Oldest first; ``after``/``limit`` page through them (``KeyStore.find``)."""
        return self._store.find(role, repository, state, after, limit)

    def all(self) -> list[KeyRecord]:
        return self.find()

    def counts(self) -> dict[str, int]:
        """How many keys are in each state, every state named (the metrics' key counts)."""
        found = self._store.count_by_state()
        return {state.value: found.get(state.value, 0) for state in KeyState}

    def set_state(self, key_id: str, state: KeyState) -> KeyRecord:
        now = time.time()
        retired = now if state is KeyState.RETIRED else None
        destroyed = now if state is KeyState.DESTROYED else None
        self._store.set_state(key_id, state, retired, destroyed)
        self._cache.pop(key_id, None)
        return self.get(key_id)

    def set_certificate(self, key_id: str, certificate_pem: str) -> KeyRecord:
        """Keep ``certificate_pem`` as the key's current certificate (the last one issued)."""
        self._store.set_certificate(key_id, certificate_pem)
        self._cache.pop(key_id, None)
        return self.get(key_id)
