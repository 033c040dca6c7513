"""``signerd audit verify|export``: read the audit log straight from the state directory.

These commands open the SQLite files read-only (no daemon, no token, no PIN needed), so
an auditor can run them on a copy of the state directory; with a config naming a shared
database (``[state] url``), they read the one chain of every replica there.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from signer.cli import COMMANDS, PARSER_EXTENSIONS

if TYPE_CHECKING:
    from signer.config import AuditConfig
    from signer.storage import Backend
    from signer.storage.interfaces import AuditReader


def _state_dir(args: argparse.Namespace) -> Path:
    return _where(args)[0]


def _shared(args: argparse.Namespace) -> Backend | None:
    """The shared database the config names (replicas), else None (the SQLite files)."""
    if args.state_dir:
        return None
    from signer.config import load_config, open_state

    config = load_config(Path(args.config))
    if not config.state.url or config.state.url.startswith("sqlite:"):
        return None
    return open_state(config)


def _where(args: argparse.Namespace) -> tuple[Path, AuditConfig]:
    """The state directory and the checkpoint cadence (the defaults without --config)."""
    from signer.config import AuditConfig, load_config

    if args.state_dir:
        return Path(args.state_dir), AuditConfig()
    config = load_config(Path(args.config))
    return config.state.dir, config.audit


def _verify(args: argparse.Namespace) -> int:
    from signer.audit.verify import verify

    state, settings = _where(args)
    if args.checkpoint_entries or args.checkpoint_seconds:
        settings = replace(
            settings,
            checkpoint_entries=args.checkpoint_entries or settings.checkpoint_entries,
            checkpoint_seconds=args.checkpoint_seconds or settings.checkpoint_seconds,
        )
    # --anchor must name a file; the configured one may be missing only before the first
    # checkpoint (verify reports it missing once the database holds one).
    anchor = Path(args.anchor) if args.anchor else settings.anchor_file
    if anchor is not None and (args.anchor or anchor.exists()) and not anchor.is_file():
        raise ValueError(f"no anchor file {anchor}")
    shared = _shared(args)
    if shared is not None:
        try:
            report = verify(shared.audit_reader(), None, args.audit_key_id, settings, anchor)
        finally:
            shared.close()
    else:
        report = verify(state / "audit.db", state / "keys.db", args.audit_key_id, settings, anchor)
    for problem in report.problems:
        print(problem)
    print(report.summary())
    if anchor is not None and not anchor.exists() and not report.checkpoints:
        print(f"note: no anchor file {anchor} yet (no checkpoint signed yet)", file=sys.stderr)
    return 0 if report.ok else 1


def _export(args: argparse.Namespace) -> int:
    from signer.audit.verify import export

    state = _state_dir(args)
    shared = _shared(args)
    source: Path | AuditReader = state / "audit.db" if shared is None else shared.audit_reader()
    try:
        if args.out and args.out != "-":
            with open(args.out, "w") as out:
                count = export(source, out, args.since)
            print(f"{count} entries written to {args.out}", file=sys.stderr)
        else:
            export(source, sys.stdout, args.since)
    finally:
        if shared is not None:
            shared.close()
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
    verify.add_argument(
        "--anchor",
        help="the anchor file the daemon appended checkpoints to ([audit] anchor_file, its "
        "default with --config): detects a truncated tail and forged appends",
    )
    verify.add_argument(
        "--checkpoint-entries", type=int, help="the daemon's cadence (default: from --config)"
    )
    verify.add_argument(
        "--checkpoint-seconds", type=float, help="the daemon's cadence (default: from --config)"
    )
    export = where(audit_sub.add_parser("export", help="write the entries as JSON lines"))
    export.add_argument("--out", help="file to write (default: stdout)")
    export.add_argument("--since", type=int, default=0, help="only entries after this seq")


PARSER_EXTENSIONS.append(_extend)
COMMANDS["audit verify"] = _verify
COMMANDS["audit export"] = _export
