"""The storage layer: the only code that speaks SQL.

``interfaces`` names what the daemon keeps (one small protocol per store), ``records``
the values it keeps; ``sqlite`` is the embedded backend of one host (a file per store),
``postgresql`` the shared one of replicas. ``open_backend`` picks one from the config.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from signer.storage.interfaces import (
        AuditChain,
        AuditReader,
        Buckets,
        KeyStore,
        NotaryKeys,
        QuorumRequests,
        VersionClaims,
    )


class Backend(Protocol):
    """Makes the stores of one state (SQLite files, or one shared database)."""

    name: str

    def keys(self) -> KeyStore: ...
    def versions(self) -> VersionClaims: ...
    def quorum(self) -> QuorumRequests: ...
    def notary(self) -> NotaryKeys: ...
    def buckets(self) -> Buckets: ...
    def audit(self) -> AuditChain: ...
    def audit_reader(self) -> AuditReader: ...

    def healthy(self) -> bool:
        """False while the state cannot be reached (health then says NOT_SERVING)."""
        ...

    def close(self) -> None: ...


def open_backend(state_dir: Path, url: str | None = None, password: str | None = None) -> Backend:
    """The backend for ``[state]``: SQLite files in ``state_dir`` unless ``url`` names a
    PostgreSQL database (``postgresql://...``; ``password`` read by the config)."""
    if url and url.startswith(("postgresql://", "postgres://")):
        from signer.storage.postgresql.backend import PostgresBackend

        return PostgresBackend(url, password)
    if url and not url.startswith("sqlite:"):
        from signer.errors import ConfigError

        raise ConfigError(f"[state] url {url!r}: use postgresql://... or sqlite:///dir")
    from signer.storage.sqlite.backend import SqliteBackend

    if url:
        state_dir = Path(url[len("sqlite://") :]) if url.startswith("sqlite://") else state_dir
    return SqliteBackend(state_dir)
