"""Schema versions of the state, and the migrations between them, for both backends.

The state's schema has one version number, the same for SQLite and PostgreSQL: version
N means the same tables and columns in either. Each backend keeps its steps next to its
SQL (``signer.storage.sqlite.schema``, ``signer.storage.postgresql.schema``), numbered
alike. A schema change is a new step appended to both lists, never an edit of an earlier
one: a state at version N is migrated by running the steps after N, in order, each in
one transaction with the version it reaches (a crash leaves the last version reached).

The daemon applies pending steps itself when it opens its state (a fresh state is
created at the latest version) and refuses a state whose version is newer than it knows:
the state was migrated by a newer signerd, whose tables this one may misread.
``signerd state migrate`` applies them on demand (before a rolling upgrade of replicas,
or as a database role allowed to change the schema when the daemon's is not) and says
what it did.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from signer.errors import ConfigError

# The steps, described once for both backends (each backend holds the SQL). Version 1
# is the schema of the first release, which a state made before versions existed has.
STEPS: dict[int, str] = {
    1: "the tables of the first release",
    2: "audit: an index of each key's signatures (notary retire-unused, last use of keys)",
    3: "audit: the replica that wrote each entry (replicas share one chain)",
}
VERSION = max(STEPS)


class NewerSchema(ConfigError):
    """The state was made or migrated by a newer signerd: refuse it (exit 2 at start)."""

    def __init__(self, where: str, found: int) -> None:
        super().__init__(
            f"the state at {where} has schema version {found}, newer than this signerd "
            f"knows ({VERSION}): upgrade signerd, or point it at a state it made"
        )
        self.found = found


@dataclass
class Report:
    """What a migration found and did (``signerd state migrate`` prints it)."""

    where: str
    before: int  # 0: an empty state
    after: int
    applied: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        if self.before == self.after:
            return [f"{self.where}: schema version {self.after}, nothing to migrate"]
        before = "empty" if self.before == 0 else f"version {self.before}"
        head = f"{self.where}: schema {before} -> version {self.after}"
        return [head] + [f"  applied {step}" for step in self.applied]


def describe(version: int) -> str:
    return f"{version}: {STEPS[version]}"


def migrate_state(url: str, password: str | None = None) -> Report:
    """Apply the pending steps to the state ``url`` names (``sqlite:///DIR`` or
    ``postgresql://...``): what was found and done (nothing when it is current)."""
    if url.startswith(("postgresql://", "postgres://")):
        from signer.storage.postgresql import schema
        from signer.storage.postgresql.db import Database

        db = Database(url, password, max_size=1)
        try:
            return db.run(lambda conn: schema.prepare(conn, db.where))
        finally:
            db.close()
    if url.startswith("sqlite://") and url[len("sqlite://") :].startswith("/"):
        from pathlib import Path

        from signer.storage.sqlite import schema as sqlite_schema

        return sqlite_schema.prepare(Path(url[len("sqlite://") :]))
    raise ConfigError(f"state {url!r}: use postgresql://... or sqlite:///PATH/TO/STATE_DIR")
