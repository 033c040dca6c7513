"""The state's schema versions, shared by both backends and by ``signerd state migrate``.

The state's schema has one version number, the same for SQLite and PostgreSQL: version
N means the same tables and columns in either. Each backend keeps its steps next to its
SQL (``signer.storage.sqlite.schema``, ``signer.storage.postgresql.schema``), numbered
alike; this module only names the versions, so that both import it and it imports
neither (``signer.storage.migrations`` picks the backend, on top of them).
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
