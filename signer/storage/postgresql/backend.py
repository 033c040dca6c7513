"""The PostgreSQL backend: every store on one pool of one shared database."""

from __future__ import annotations

from signer.errors import ConfigError, StorageUnavailable
from signer.storage.postgresql import schema
from signer.storage.postgresql.audit import PostgresAuditChain, PostgresAuditReader
from signer.storage.postgresql.db import Database
from signer.storage.postgresql.stores import (
    PostgresBuckets,
    PostgresKeys,
    PostgresNotaryKeys,
    PostgresQuorum,
    PostgresVersions,
)


class PostgresBackend:
    """Replicas share this state; the schema is created on first use and migrated when
    older (under a lock); NewerSchema for a database a newer signerd migrated."""

    name = "postgresql"

    def __init__(self, url: str, password: str | None = None) -> None:
        self.db = Database(url, password)
        try:
            self.migration = self.db.run(lambda conn: schema.prepare(conn, self.db.where))
        except ConfigError:
            self.db.close()
            raise
        except StorageUnavailable as exc:
            self.db.close()
            raise ConfigError(f"cannot open the state database: {exc}") from exc
        self._keys: PostgresKeys | None = None

    def keys(self) -> PostgresKeys:
        self._keys = PostgresKeys(self.db)
        return self._keys

    def versions(self) -> PostgresVersions:
        return PostgresVersions(self.db)

    def quorum(self) -> PostgresQuorum:
        return PostgresQuorum(self.db)

    def notary(self) -> PostgresNotaryKeys:
        return PostgresNotaryKeys(self.db)

    def buckets(self) -> PostgresBuckets:
        return PostgresBuckets(self.db)

    def audit(self) -> PostgresAuditChain:
        return PostgresAuditChain(self.db)

    def audit_reader(self) -> PostgresAuditReader:
        return PostgresAuditReader(self.db)

    def healthy(self) -> bool:
        return self.db.healthy()

    def close(self) -> None:
        self.db.close()
