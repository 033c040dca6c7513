"""``signerd audit verify|export``: read the audit log straight from the state directory.

These commands open the SQLite files read-only (no daemon, no token, no PIN needed), so
an auditor can run them on a copy of the state directory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from signer.cli import COMMANDS, PARSER_EXTENSIONS


def _state_dir(args: argparse.Namespace) -> Path:
    if args.state_dir:
        return Path(args.state_dir)
    from signer.config import load_config

    return load_config(Path(args.config)).state_dir


def _verify(args: argparse.Namespace) -> int:
    from signer.audit.verify import verify

    state = _state_dir(args)
    report = verify(state / "audit.db", state / "keys.db", args.audit_key_id)
    for problem in report.problems:
        print(problem)
    print(report.summary())
    return 0 if report.ok else 1


def _export(args: argparse.Namespace) -> int:
    from signer.audit.verify import export

    state = _state_dir(args)
    if args.out and args.out != "-":
        with open(args.out, "w") as out:
            count = export(state / "audit.db", out, args.since)
        print(f"{count} entries written to {args.out}", file=sys.stderr)
    else:
        export(state / "audit.db", sys.stdout, args.since)
    return 0


def _extend(sub: Any) -> None:
    audit = sub.add_parser("audit", help="verify or export the audit log")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)

    def where(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        group = p.add_mutually_exclusive_group(required=True)
        group.add_argument("--config", help="the daemon's config (to find its state dir)")
        group.add_argument("--state-dir", help="a state directory (or a copy of one)")
        return p

    verify = where(audit_sub.add_parser("verify", help="check the hash chain and checkpoints"))
    verify.add_argument("--audit-key-id", help="pin the audit key expected to sign checkpoints")
    export = where(audit_sub.add_parser("export", help="write the entries as JSON lines"))
    export.add_argument("--out", help="file to write (default: stdout)")
    export.add_argument("--since", type=int, default=0, help="only entries after this seq")


PARSER_EXTENSIONS.append(_extend)
COMMANDS["audit verify"] = _verify
COMMANDS["audit export"] = _export
