"""Rule-based grants: principals or groups -> operations on keys picked by globs.

Deny by default: a request is allowed only if some rule names the principal (directly,
through a group, or ``*``), lists the operation, and selects the key. Rules only grant;
there are no deny rules, so their order never matters.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase

from signer.errors import PermissionDenied
from signer.identity import Principal
from signer.policy import Operation, Resource, denial


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


@dataclass(frozen=True)
class Groups:
    """Named sets of principals (``group:NAME`` in rules and rate limits)."""

    members: Mapping[str, frozenset[str]]

    def of(self, name: str) -> list[str]:
        """The groups ``name`` belongs to, in file order."""
        return [g for g, members in self.members.items() if name in members]


@dataclass(frozen=True)
class Rule:
    principals: tuple[str, ...]  # names (globs allowed), "group:NAME" or "*"
    operations: frozenset[Operation]
    keys: KeySelector

    def names(self, principal: Principal, groups: Groups) -> bool:
        for entry in self.principals:
            if entry.startswith("group:"):
                if principal.name in groups.members.get(entry[len("group:") :], ()):
                    return True
            elif fnmatchcase(principal.name, entry):
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
