"""Helpers shared by the policy, TUF-rule, quorum and audit tests (no mocks: real daemons)."""

from __future__ import annotations

import datetime as dt
import hashlib
import sqlite3
import time
from pathlib import Path
from typing import Any

from securesystemslib.signer import Signature
from tuf.api.metadata import Metadata, Root, Snapshot, Targets, Timestamp

from signer_client.client import tuf_key

_KINDS = {"root": Root, "targets": Targets, "snapshot": Snapshot, "timestamp": Timestamp}


def tuf_payload(kind: str = "targets", version: int = 1, days: float = 30, **extra: Any) -> bytes:
    """Canonical JSON of a TUF ``signed`` object, as a TUF client would send it."""
    expires = (dt.datetime.now(dt.UTC) + dt.timedelta(days=days)).replace(microsecond=0)
    signed = _KINDS[kind](version=version, expires=expires, **extra)
    return Metadata(signed).signed_bytes


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def verify(key: Any, payload: bytes, signature: bytes) -> None:
    """Raise unless ``signature`` verifies for ``payload`` with the daemon key ``key``."""
    tuf_key(key).verify_signature(Signature(key.key_id, signature.hex()), payload)


def audit_rows(state: Path, where: str = "1", args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    conn = sqlite3.connect(f"file:{state / 'audit.db'}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return [
            dict(r) for r in conn.execute(f"SELECT * FROM audit WHERE {where} ORDER BY seq", args)
        ]
    finally:
        conn.close()


def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(interval)
