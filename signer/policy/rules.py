"""Rule-based grants: principals or groups -> operations on keys picked by globs.

Deny by default: a request is allowed only if some rule names the principal (directly,
through a group, or ``*``), lists the operation, and selects the key. Rules only grant;
there are no deny rules, so their order never matters.

A principal entry may say where the name must come from: ``uri:``, ``dns:`` or ``cn:``
(``"dns:admin"`` is only a DNS SAN ``admin``, never a CN ``admin``). A bare entry
matches the name whatever its source.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase

from signer.errors import PermissionDenied
from signer.policy import Operation, Resource, denial
from signer.principal import SOURCES, Principal


@dataclass(frozen=True)
class KeySelector:
    """Which keys a rule covers: fnmatch globs; an empty list matches any value."""

    key_ids: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    repositories: tuple[str, ...] = ()

    def matches(self, resource: Resource) -> bool:
        return (
            _any(self.key_ids, resource.key_id)
            and _any(self.roles, resource.role)
            and _any(self.repositories, resource.repository)
        )


def _any(globs: tuple[str, ...], value: str) -> bool:
    return not globs or any(fnmatchcase(value, g) for g in globs)


def split_source(entry: str) -> tuple[str | None, str]:
    """``"dns:admin"`` -> ``("dns", "admin")``; a bare entry -> ``(None, entry)``."""
    source, sep, name = entry.partition(":")
    if sep and source in SOURCES:
        return source, name
    return None, entry


def matches(entry: str, principal: Principal) -> bool:
    """Does a principal pattern (glob, maybe with a source prefix) name this principal?"""
    source, pattern = split_source(entry)
    if source is not None and source != principal.source:
        return False
    return fnmatchcase(principal.name, pattern)


def is_member(members: frozenset[str], principal: Principal) -> bool:
    """Exact membership: the bare name, or ``source:name``. A name that itself looks
    prefixed (a CN ``dns:admin``) is matched only as ``cn:dns:admin``, never by the
    entry ``dns:admin``, which means a DNS SAN ``admin``."""
    if f"{principal.source}:{principal.name}" in members:
        return True
    return principal.name in members and split_source(principal.name)[0] is None


@dataclass(frozen=True)
class Groups:
    """Named sets of principals (``group:NAME`` in rules and rate limits)."""

    members: Mapping[str, frozenset[str]]

    def of(self, principal: Principal) -> list[str]:
        """The groups ``principal`` belongs to, in file order (as rules see membership:
        ``cn:carol`` holds only a CN ``carol``)."""
        return [g for g, members in self.members.items() if is_member(members, principal)]

    def contains(self, group: str, principal: Principal) -> bool:
        return is_member(self.members.get(group, frozenset()), principal)


@dataclass(frozen=True)
class Rule:
    principals: tuple[str, ...]  # names (globs, maybe "dns:" etc.), "group:NAME" or "*"
    operations: frozenset[Operation]
    keys: KeySelector

    def names(self, principal: Principal, groups: Groups) -> bool:
        for entry in self.principals:
            if entry.startswith("group:"):
                if groups.contains(entry[len("group:") :], principal):
                    return True
            elif matches(entry, principal):
                return True
        return False

    def grants(
        self, principal: Principal, operation: Operation, resource: Resource, groups: Groups
    ) -> bool:
        return (
            operation in self.operations
            and self.keys.matches(resource)
            and self.names(principal, groups)
        )


@dataclass(frozen=True)
class RulePolicy:
    rules: tuple[Rule, ...]
    groups: Groups

    def authorize(self, principal: Principal, operation: Operation, resource: Resource) -> None:
        for rule in self.rules:
            if rule.grants(principal, operation, resource, self.groups):
                return
        raise PermissionDenied(denial(principal, operation, resource))
