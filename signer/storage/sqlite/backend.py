"""The SQLite backend: one file per store in the state directory (one host)."""

from __future__ import annotations

from pathlib import Path

from signer.storage.sqlite.audit import SqliteAuditChain, SqliteAuditReader
from signer.storage.sqlite.buckets import SqliteBuckets
from signer.storage.sqlite.keys import SqliteKeys
from signer.storage.sqlite.notary import SqliteNotaryKeys
from signer.storage.sqlite.quorum import SqliteQuorum
from signer.storage.sqlite.schema import FILES, prepare
from signer.storage.sqlite.versions import SqliteVersions

__all__ = ["FILES", "SqliteBackend"]


class SqliteBackend:
    """Opens each store on its own file (``keys.db``, ``audit.db``, ...) under ``state_dir``:
    shared by the worker processes of one host, never by two hosts. Opening migrates the
    files to the latest schema version (NewerSchema for a state a newer signerd made)."""

    name = "sqlite"

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.migration = prepare(state_dir)

    def keys(self) -> SqliteKeys:
        return SqliteKeys(self.state_dir / "keys.db")

    def versions(self) -> SqliteVersions:
        return SqliteVersions(self.state_dir / "tuf.db")

    def quorum(self) -> SqliteQuorum:
        return SqliteQuorum(self.state_dir / "quorum.db")

    def notary(self) -> SqliteNotaryKeys:
        return SqliteNotaryKeys(self.state_dir / "notary.db")

    def buckets(self) -> SqliteBuckets:
        return SqliteBuckets(self.state_dir / "ratelimit.db")

    def audit(self) -> SqliteAuditChain:
        return SqliteAuditChain(self.state_dir / "audit.db")

    def audit_reader(self) -> SqliteAuditReader:
        return SqliteAuditReader(self.state_dir / "audit.db", self.state_dir / "keys.db")

    def healthy(self) -> bool:
        return True  # a file that fails shows in each request's own error

    def close(self) -> None:
        return None
