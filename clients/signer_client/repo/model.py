"""Plain values passed in and out of the repository logic."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from signer_client.repo.signing import KeyRef, SigningStats


@dataclass(frozen=True)
class RoleSpec:
    """Keys and threshold of a top-level role at ``init``."""

    keys: list[KeyRef]
    threshold: int = 1


@dataclass(frozen=True)
class ThresholdCheck:
    """One threshold a role must meet (root N+1 must meet two: old keys and new keys)."""

    label: str
    threshold: int
    signed: list[str]
    unsigned: list[str]

    @property
    def ok(self) -> bool:
        return len(self.signed) >= self.threshold

    @property
    def missing(self) -> int:
        return max(0, self.threshold - len(self.signed))


@dataclass(frozen=True)
class RoleStatus:
    role: str
    published_version: int | None
    staged_version: int | None
    expires: datetime
    checks: list[ThresholdCheck]

    @property
    def signed_enough(self) -> bool:
        return all(c.ok for c in self.checks)


@dataclass
class PublishResult:
    published: dict[str, int] = field(default_factory=dict)  # role -> version written
    stats: SigningStats = field(default_factory=SigningStats)
    errors: dict[str, str] = field(default_factory=dict)  # "role/key_id" -> signing error
