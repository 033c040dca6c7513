"""Notary key ID -> registry key_id, cached per process over a ``NotaryKeys`` store.

Notary names a key by the hash of its own key JSON; the registry names it by the TUF
(securesystemslib) key_id. The store links the two and keeps what notary asks for
without touching the token: the algorithm, the public key bytes, the role and the GUN.
Rows never change once written, so every worker process caches them freely.
"""

from __future__ import annotations

import time

from signer.errors import NotFound
from signer.storage.interfaces import NotaryKeys
from signer.storage.records import NotaryKey

__all__ = ["NotaryKey", "NotaryKeyStore"]


class NotaryKeyStore:
    def __init__(self, store: NotaryKeys) -> None:
        self._store = store
        self._cache: dict[str, NotaryKey] = {}

    def add(self, key: NotaryKey) -> None:
        self._store.add(key, time.time())
        self._cache[key.notary_id] = key

    def get(self, notary_id: str) -> NotaryKey:
        key = self._cache.get(notary_id)
        if key is not None:
            return key
        key = self._store.get(notary_id)
        if key is None:
            raise NotFound(f"key {notary_id} not found")
        self._cache[notary_id] = key
        return key

    def all(self) -> list[NotaryKey]:
        return self._store.all()

    def close(self) -> None:
        self._store.close()
