"""Reviewing a policy before SIGHUP: findings that explain themselves, and `explain`.

``check`` lists what is probably a mistake in a policy that parses: rules no request can
ever match (an empty group, a role no key can have), and grants wider than a role's
keys should be (raw signing of TUF roles, which skips the TUF payload rules; anyone
``*`` signing or destroying; destroy on every key). ``explain`` says which rule allows
one request, or for each rule the first reason it does not, so a denial in the audit
log can be traced to the policy text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fnmatch import fnmatchcase

from signer.audit import AUDIT_ROLE
from signer.identity import Principal
from signer.policy import Operation, Resource
from signer.policy.file import FilePolicy
from signer.policy.metadata import TOP_LEVEL_ROLES
from signer.policy.rules import Rule, split_source

# Roles a key can be bound to: the top-level ones, delegations (targets/... for notary,
# any name for TUF), and the daemon's own audit key.
_TOP_LEVEL = (*sorted(TOP_LEVEL_ROLES), AUDIT_ROLE)
_ROLE_NAME = re.compile(r"[A-Za-z0-9*?\[\]][A-Za-z0-9_.*?\[\]/-]*")
_RAW_IS_WIDE = TOP_LEVEL_ROLES


@dataclass(frozen=True)
class Finding:
    rule: int  # 1-based, as in the parser's messages; 0 for the policy as a whole
    severity: str  # "error": can never match; "warning": wider than it should be
    message: str

    def __str__(self) -> str:
        where = f"rule #{self.rule}" if self.rule else "policy"
        return f"{self.severity}: {where}: {self.message}"


def check(policy: FilePolicy) -> list[Finding]:
    findings: list[Finding] = []
    for name, members in policy.groups.members.items():
        if not members:
            findings.append(Finding(0, "warning", f"group {name!r} has no members"))
    for index, rule in enumerate(policy.rules.rules, 1):
        findings.extend(_check_rule(index, rule, policy))
    return findings


def _check_rule(index: int, rule: Rule, policy: FilePolicy) -> list[Finding]:
    out: list[Finding] = []
    groups = [p[len("group:") :] for p in rule.principals if p.startswith("group:")]
    others = [p for p in rule.principals if not p.startswith("group:")]
    if groups and not others and all(not policy.groups.members.get(g) for g in groups):
        out.append(Finding(index, "error", f"names only empty group(s) {groups}: matches nobody"))
    for role in rule.keys.roles:
        if not _ROLE_NAME.fullmatch(role):
            out.append(Finding(index, "error", f"role {role!r} is not a role name any key has"))
        elif "*" not in role and role.lower() in _TOP_LEVEL and role not in _TOP_LEVEL:
            out.append(Finding(index, "error", f"role {role!r}: roles are lower case"))
        elif _looks_misspelt(role):
            out.append(
                Finding(index, "warning", f"role {role!r} looks like a misspelt top-level role")
            )
    roles = rule.keys.roles or ("*",)
    if Operation.SIGN_RAW in rule.operations:
        wide = sorted({r for r in _RAW_IS_WIDE for g in roles if fnmatchcase(r, g)})
        if wide:
            out.append(
                Finding(
                    index,
                    "warning",
                    f"grants sign-raw on {wide} keys: raw signing skips the TUF payload rules "
                    "(role binding, expiry, anti-rollback)",
                )
            )
    risky = rule.operations & {Operation.SIGN, Operation.SIGN_RAW, Operation.DESTROY}
    if "*" in rule.principals and risky:
        ops = sorted(op.value for op in risky)
        out.append(Finding(index, "warning", f"every authenticated client may {ops}"))
    selector = rule.keys
    if Operation.DESTROY in rule.operations and not (
        selector.key_ids or selector.roles or selector.repositories
    ):
        out.append(Finding(index, "warning", "destroy on every key of every repository"))
    return out


def _looks_misspelt(role: str) -> bool:
    """'tagrets', 'timestmap': same letters as a top-level role, not the role."""
    head = role.split("/", 1)[0]
    return any(head != top and sorted(head) == sorted(top) for top in _TOP_LEVEL if "*" not in head)


@dataclass(frozen=True)
class Explanation:
    allowed_by: int  # 1-based rule number, 0 if nothing allows it
    reasons: tuple[str, ...]  # per rule, why it does not apply (when denied)

    def lines(self) -> list[str]:
        if self.allowed_by:
            return [f"allowed by rule #{self.allowed_by}"]
        return ["denied: no rule allows it", *self.reasons]


def explain(
    policy: FilePolicy, principal: Principal, operation: Operation, resource: Resource
) -> Explanation:
    reasons = []
    groups = policy.groups
    for index, rule in enumerate(policy.rules.rules, 1):
        if rule.grants(principal, operation, resource, groups):
            return Explanation(index, ())
        reasons.append(f"  rule #{index}: {_why_not(rule, principal, operation, resource, policy)}")
    if not policy.rules.rules:
        reasons.append("  the policy has no rules")
    return Explanation(0, tuple(reasons))


def _why_not(
    rule: Rule, principal: Principal, operation: Operation, resource: Resource, policy: FilePolicy
) -> str:
    if not rule.names(principal, policy.groups):
        shown = f"{principal.source}:{principal.name}"
        return f"does not name {shown} (principals {list(rule.principals)})"
    if operation not in rule.operations:
        ops = sorted(op.value for op in rule.operations)
        return f"does not grant {operation.value!r} (operations {ops})"
    selector = rule.keys
    for label, globs, value in (
        ("key_ids", selector.key_ids, resource.key_id),
        ("roles", selector.roles, resource.role),
        ("repositories", selector.repositories, resource.repository),
    ):
        if globs and not any(fnmatchcase(value, g) for g in globs):
            return f"{label} {list(globs)} do not match {value!r}"
    return "does not apply"  # unreachable while grants() is the conjunction above


def principal_from(text: str) -> Principal:
    """``dns:ci.example.org``, ``uri:spiffe://...``, ``cn:alice`` or a bare CN."""
    source, name = split_source(text)
    return Principal(name, source or "cn", "")
