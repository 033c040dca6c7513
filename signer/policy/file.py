"""The policy file: who may do what, rate limits, TUF limits and quorum, in one TOML file.

    [groups]
    release = ["spiffe://example.org/release-bot", "alice"]

    [[rules]]
    principals = ["group:release", "dns:notary.example.org"]   # names, group:NAME, "*"
    operations = ["sign", "read"]   # read sign sign-raw create retire destroy approve audit certify
    keys = { roles = ["targets", "targets/*"], repositories = ["docker.io/*"], key_ids = [] }

    [rate_limits]
    "group:build-farm" = { rate = 100.0, burst = 200 }   # names, dns: etc., group:NAME, "*"

    [tuf]
    max_expiry_days = { root = 365, targets = 90, snapshot = 7, timestamp = 1 }

    [quorum]
    approvals = 2
    window_seconds = 3600

Loading is all-or-nothing: a file with any mistake raises ConfigError naming it, and a
reload (SIGHUP) keeps the previous policy. Once loaded, a ``FilePolicy`` is immutable
(apart from its rate-limit buckets), so swapping it in is one atomic assignment.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from signer.errors import ConfigError
from signer.principal import Principal

if TYPE_CHECKING:
    from signer.storage.interfaces import Buckets
from signer.policy import Operation, QuorumSettings, Resource, TufLimits
from signer.policy.ratelimit import Limit, RateLimiter, bucket_key
from signer.policy.rules import Groups, KeySelector, Rule, RulePolicy, split_source

_TOP_LEVEL = {"groups", "rules", "rate_limits", "tuf", "quorum"}
_OPERATIONS = {op.value: op for op in Operation}


@dataclass(frozen=True)
class FilePolicy:
    source: str
    rules: RulePolicy
    groups: Groups
    rate_limiter: RateLimiter
    tuf: TufLimits
    quorum: QuorumSettings

    def authorize(self, principal: Principal, operation: Operation, resource: Resource) -> None:
        self.rules.authorize(principal, operation, resource)

    @classmethod
    def load(cls, path: Path, buckets: Buckets | None = None) -> FilePolicy:
        """``buckets``: where the rate limiter keeps its levels (default: in memory)."""
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read policy file {path}: {exc}") from exc
        return cls.from_bytes(data, str(path), buckets)

    @classmethod
    def from_bytes(
        cls, data: bytes, source: str = "<policy>", buckets: Buckets | None = None
    ) -> FilePolicy:
        """The policy in a file's bytes: TOML is UTF-8, anything else a ConfigError."""
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"policy {source}: not UTF-8 text: {exc}") from exc
        return cls.parse(text, source, buckets)

    @classmethod
    def parse(
        cls, text: str, source: str = "<policy>", buckets: Buckets | None = None
    ) -> FilePolicy:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"policy {source}: not valid TOML: {exc}") from exc
        return _Parser(source, buckets).policy(data)


class _Parser:
    def __init__(self, source: str, buckets: Buckets | None = None) -> None:
        self.source = source
        self.buckets = buckets

    def fail(self, where: str, message: str) -> ConfigError:
        return ConfigError(f"policy {self.source}: {where}: {message}")

    def policy(self, data: dict[str, Any]) -> FilePolicy:
        unknown = sorted(set(data) - _TOP_LEVEL)
        if unknown:
            raise self.fail(
                "top level", f"unknown section(s) {unknown}; known: {sorted(_TOP_LEVEL)}"
            )
        groups = self.groups(data.get("groups", {}))
        raw_rules = data.get("rules", [])
        if not isinstance(raw_rules, list):
            raise self.fail("rules", "write rules as [[rules]] tables")
        rules = tuple(self.rule(i, r, groups) for i, r in enumerate(raw_rules, 1))
        limits = self.rate_limits(data.get("rate_limits", {}), groups)
        return FilePolicy(
            source=self.source,
            rules=RulePolicy(rules, groups),
            groups=groups,
            rate_limiter=RateLimiter(limits, _selector(limits, groups), self.buckets),
            tuf=self.tuf(data.get("tuf", {})),
            quorum=self.quorum(data.get("quorum", {})),
        )

    def groups(self, raw: Any) -> Groups:
        if not isinstance(raw, dict):
            raise self.fail("[groups]", "must be a table of name = [principals]")
        members = {}
        for name, names in raw.items():
            entries = self.strings(f"groups.{name}", names)
            for entry in entries:
                self.check_prefix(f"groups.{name}", entry)
            members[name] = frozenset(entries)
        return Groups(members)

    def rule(self, index: int, raw: Any, groups: Groups) -> Rule:
        where = f"rule #{index}"
        if not isinstance(raw, dict):
            raise self.fail(where, "must be a table")
        unknown = sorted(set(raw) - {"principals", "operations", "keys", "description"})
        if unknown:
            raise self.fail(where, f"unknown field(s) {unknown}")
        principals = self.strings(f"{where} principals", raw.get("principals"))
        if not principals:
            raise self.fail(where, "principals is required and may not be empty")
        for entry in principals:
            self.check_group(where, entry, groups)
            self.check_prefix(where, entry)
        ops = self.strings(f"{where} operations", raw.get("operations"))
        if not ops:
            raise self.fail(where, "operations is required and may not be empty")
        bad = [op for op in ops if op not in _OPERATIONS]
        if bad:
            raise self.fail(where, f"unknown operation(s) {bad}; known: {sorted(_OPERATIONS)}")
        keys = raw.get("keys", {})
        if not isinstance(keys, dict):
            raise self.fail(where, "keys must be a table {roles, repositories, key_ids}")
        unknown = sorted(set(keys) - {"roles", "repositories", "key_ids"})
        if unknown:
            raise self.fail(where, f"unknown key selector(s) {unknown}")
        selector = KeySelector(
            key_ids=tuple(self.strings(f"{where} keys.key_ids", keys.get("key_ids", []))),
            roles=tuple(self.strings(f"{where} keys.roles", keys.get("roles", []))),
            repositories=tuple(
                self.strings(f"{where} keys.repositories", keys.get("repositories", []))
            ),
        )
        return Rule(tuple(principals), frozenset(_OPERATIONS[op] for op in ops), selector)

    def rate_limits(self, raw: Any, groups: Groups) -> dict[str, Limit]:
        if not isinstance(raw, dict):
            raise self.fail("[rate_limits]", "must be a table of principal = {rate, burst}")
        limits = {}
        for who, spec in raw.items():
            where = f"rate_limits.{who!r}"
            self.check_group(where, who, groups)
            self.check_prefix(where, who)
            if not isinstance(spec, dict) or set(spec) - {"rate", "burst"} or "rate" not in spec:
                raise self.fail(where, "write { rate = PER_SECOND, burst = N }")
            rate = self.number(where + ".rate", spec["rate"])
            burst = self.number(where + ".burst", spec.get("burst", max(1.0, rate)))
            if rate <= 0 or burst < 1:
                raise self.fail(where, "rate must be > 0 and burst >= 1")
            limits[who] = Limit(rate, burst)
        return limits

    def tuf(self, raw: Any) -> TufLimits:
        if not isinstance(raw, dict) or set(raw) - {"max_expiry_days"}:
            raise self.fail("[tuf]", "only max_expiry_days = { ROLE = DAYS } is known")
        days = raw.get("max_expiry_days", {})
        if not isinstance(days, dict):
            raise self.fail("tuf.max_expiry_days", "must be a table of role = days")
        parsed = {}
        for role, value in days.items():
            n = self.number(f"tuf.max_expiry_days.{role}", value)
            if n <= 0:
                raise self.fail(f"tuf.max_expiry_days.{role}", "must be > 0")
            parsed[role] = n
        return TufLimits(parsed)

    def quorum(self, raw: Any) -> QuorumSettings:
        if not isinstance(raw, dict) or set(raw) - {"approvals", "window_seconds"}:
            raise self.fail("[quorum]", "only approvals and window_seconds are known")
        approvals = raw.get("approvals", 2)
        if not isinstance(approvals, int) or isinstance(approvals, bool) or approvals < 1:
            raise self.fail("quorum.approvals", "must be an integer >= 1")
        window = self.number("quorum.window_seconds", raw.get("window_seconds", 3600))
        if window <= 0:
            raise self.fail("quorum.window_seconds", "must be > 0")
        return QuorumSettings(approvals, window)

    def check_group(self, where: str, entry: str, groups: Groups) -> None:
        if entry.startswith("group:") and entry[len("group:") :] not in groups.members:
            raise self.fail(where, f"{entry!r} names a group not defined in [groups]")

    def check_prefix(self, where: str, entry: str) -> None:
        """``uri:``, ``dns:`` and ``cn:`` need a name after them."""
        source, name = split_source(entry)
        if source is not None and not name:
            raise self.fail(where, f"{entry!r} names a source ({source}:) but no principal")

    def strings(self, where: str, value: Any) -> list[str]:
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(where, "must be a list of strings")
        return list(value)

    def number(self, where: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            raise self.fail(where, "must be a number")
        return float(value)


def _selector(limits: dict[str, Limit], groups: Groups) -> Callable[[Principal], Limit | None]:
    """Which limit applies to a principal: its own entry (``dns:admin``, else the bare
    ``admin``, matched as rules match group members), else its first group's, else ``*``."""

    def select(principal: Principal) -> Limit | None:
        own = limits.get(bucket_key(principal))  # "dns:admin": the bucket's own name
        if own is None and split_source(principal.name)[0] is None:
            own = limits.get(principal.name)  # a CN "dns:x" is never the entry "dns:x"
        if own is not None:
            return own
        for group in groups.of(principal):
            limit = limits.get(f"group:{group}")
            if limit is not None:
                return limit
        return limits.get("*")

    return select
