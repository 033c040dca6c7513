"""``signerd policy check|explain``: review a policy change before SIGHUP applies it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from signer.cli import COMMANDS, PARSER_EXTENSIONS, _client, client_args
from signer.policy import Operation, Resource
from signer.policy.file import FilePolicy
from signer.policy.review import check, explain, principal_from

EXIT_FINDINGS = 1


def _check(args: argparse.Namespace) -> int:
    policy = FilePolicy.load(Path(args.file))
    findings = check(policy)
    for finding in findings:
        print(finding)
    errors = sum(f.severity == "error" for f in findings)
    rules = len(policy.rules.rules)
    print(f"{args.file}: {rules} rules, {errors} errors, {len(findings) - errors} warnings")
    return EXIT_FINDINGS if errors or (findings and args.strict) else 0


def _explain(args: argparse.Namespace) -> int:
    policy = FilePolicy.load(Path(args.file))
    role, repository = args.role or "", args.repository or ""
    key_id = args.key or ""
    if key_id and not (args.role or args.repository):
        with _client(args) as client:  # the key's role and repository, as the daemon has them
            key = client.get_key(key_id)
        role, repository = key.role, key.repository
    try:
        operation = Operation(args.operation)
    except ValueError:
        known = ", ".join(op.value for op in Operation)
        raise ValueError(f"--operation {args.operation!r}: one of {known}") from None
    principal = principal_from(args.principal)
    resource = Resource(key_id, role, repository)
    print(
        f"{principal.source}:{principal.name} {operation.value} key {key_id or '-'} "
        f"(role {role or '-'}, repository {repository or '-'}):"
    )
    result = explain(policy, principal, operation, resource)
    for line in result.lines():
        print(line)
    return 0 if result.allowed_by else EXIT_FINDINGS


def _extend(sub: Any) -> None:
    policy = sub.add_parser("policy", help="review a policy file before it is loaded")
    policy_sub = policy.add_subparsers(dest="policy_command", required=True)
    c = policy_sub.add_parser("check", help="rules that can never match, grants too wide")
    c.add_argument("file", metavar="POLICY_FILE")
    c.add_argument("--strict", action="store_true", help="warnings fail too (exit 1)")
    e = client_args(
        policy_sub.add_parser("explain", help="which rule allows a request, or why none")
    )
    e.add_argument("file", metavar="POLICY_FILE")
    e.add_argument("--principal", required=True, help="cn:NAME, dns:NAME, uri:URI or NAME (CN)")
    e.add_argument("--operation", required=True, help="sign, sign-raw, create, read, ...")
    e.add_argument("--key", help="a key ID (its role and repository are asked of the daemon)")
    e.add_argument("--role", help="the key's role (instead of asking the daemon)")
    e.add_argument("--repository", help="the key's repository (GUN)")


PARSER_EXTENSIONS.append(_extend)
COMMANDS["policy check"] = _check
COMMANDS["policy explain"] = _explain
