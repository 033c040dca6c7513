"""``signerd``: run the daemon, make a dev PKI, and manage keys through the API.

The ``keys`` commands are ordinary mTLS clients of the running daemon: they hold no key
material and need a client certificate (``--client-config`` or ``SIGNER_*`` variables).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from signer.errors import ConfigError, SignerError

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(
    name: str,
) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    def register(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        COMMANDS[name] = fn
        return fn

    return register


def _client(args: argparse.Namespace) -> Any:
    from signer_client import ClientConfig, SignerClient

    if args.client_config:
        return SignerClient(ClientConfig.from_file(Path(args.client_config)))
    return SignerClient.from_env(args.address)


def _print_key(key: Any) -> None:
    from google.protobuf.json_format import MessageToDict

    print(json.dumps(MessageToDict(key, preserving_proto_field_name=True), indent=2))


@command("serve")
def _serve(args: argparse.Namespace) -> int:
    from signer.supervisor import serve

    return serve(Path(args.config))


@command("dev-pki")
def _dev_pki(args: argparse.Namespace) -> int:
    from signer.devpki import make_dev_pki

    out = Path(args.out)
    done = make_dev_pki(
        out,
        args.client or ["admin"],
        tuple(args.server_name or ["localhost"]),
        reissue_server=bool(args.server_name),
    )
    print(f"dev PKI in {out}:")
    for line in done:
        print(f"  {line}")
    return 0


@command("check")
def _check(args: argparse.Namespace) -> int:
    from signer.app import SignerApp
    from signer.config import load_config

    app = SignerApp(load_config(Path(args.config)))
    try:
        app.open()
        problems = app.check()
    finally:
        app.close()
    for problem in problems:
        print(problem)
    print(f"{len(problems)} disagreement(s) between the registry and the token")
    return 1 if problems else 0


@command("keys create")
def _keys_create(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print_key(
            client.create_key(args.label, args.algorithm, args.role, args.repository, args.quorum)
        )
    return 0


@command("keys list")
def _keys_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        for key in client.list_keys(args.role or "", args.repository or "", args.state or ""):
            notary = f"  notary {key.notary_key_id[:12]}" if key.notary_key_id else ""
            cert = f" cert {key.certificate_key_id[:12]}" if key.certificate_key_id else ""
            print(
                f"{key.key_id}  {key.scheme:20} {key.role:12} {key.repository or '-':12} "
                f"{key.label}  [{_state(key.state)}]{notary}{cert}"
            )
    return 0


@command("keys certify")
def _keys_certify(args: argparse.Namespace) -> int:
    with _client(args) as client:
        issued = client.issue_certificate(args.key_id, args.common_name, args.days)
    if args.out:
        Path(args.out).write_text(issued.certificate_pem)
    _print_key(issued)
    return 0


@command("keys show")
def _keys_show(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print_key(client.get_key(args.key_id))
    return 0


@command("keys retire")
def _keys_retire(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print_key(client.retire_key(args.key_id))
    return 0


@command("keys destroy")
def _keys_destroy(args: argparse.Namespace) -> int:
    if args.confirm != args.key_id:
        print("refusing: --confirm must repeat the key_id", file=sys.stderr)
        return 2
    with _client(args) as client:
        _print_key(client.destroy_key(args.key_id, args.confirm))
    return 0


@command("notary retire-unused")
def _notary_retire(args: argparse.Namespace) -> int:
    from signer.audit import AuditLog
    from signer.config import load_config, open_state
    from signer.notary.retire import Retirer
    from signer.notary.store import NotaryKeyStore
    from signer.pipeline.auditing import Recorder
    from signer.registry import KeyRegistry

    config = load_config(Path(args.config))
    state = open_state(config)
    registry, store = KeyRegistry(state.keys()), NotaryKeyStore(state.notary())
    audit = AuditLog(state.audit(), replica=config.state.replica_name)
    try:
        retirer = Retirer(registry, store, Recorder(audit), audit)
        found = retirer.candidates(args.days, args.idle_repositories)
        done = found if args.dry_run else retirer.retire(found)
        verb = "would retire" if args.dry_run else "retired"
        for candidate in done:
            key = candidate.key
            print(f"{verb} {candidate.notary_id} ({key.role} {key.repository}): {candidate.reason}")
        print(f"{len(done)} key(s) {verb}")
    finally:
        audit.close()
        store.close()
        registry.close()
        state.close()
    return 0


def _state_url(args: argparse.Namespace, url: str | None) -> tuple[str, str | None]:
    """The state a ``state`` command works on and its database password: ``url`` (the
    password from --password-file or $SIGNER_DB_PASSWORD), else the config's ``[state]``."""
    from signer.config import StateConfig, _url_password, load_config

    if url is None:
        config = load_config(Path(args.config))
        if not config.state.url:
            return f"sqlite://{config.state.dir.resolve()}", None
        state = config.state
    else:
        if _url_password(url):
            raise ConfigError("no password in the URL: use --password-file or $SIGNER_DB_PASSWORD")
        pw_file = Path(args.password_file) if args.password_file else None
        state = StateConfig(url=url, password_file=pw_file)
    assert state.url is not None
    return state.url, state.read_password() if not state.url.startswith("sqlite:") else None


@command("state migrate")
def _state_migrate(args: argparse.Namespace) -> int:
    from signer.storage.migrations import migrate_state

    print("\n".join(migrate_state(*_state_url(args, args.url)).lines()))
    return 0


@command("state copy")
def _state_copy(args: argparse.Namespace) -> int:
    from signer.storage.copy import copy_state, source_dir

    url, password = _state_url(args, args.to)
    if not url.startswith(("postgresql://", "postgres://")):
        raise ConfigError(f"--to {url!r}: copy into a postgresql://... database")
    report = copy_state(source_dir(args.source), url, password, lambda line: print(line))
    print("\n".join(report.lines()))
    return 0


def _state(value: int) -> str:
    from signer_api.v1 import signer_pb2 as pb

    return pb.KeyState.Name(value).removeprefix("KEY_STATE_").lower()  # type: ignore[arg-type]


def client_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options every API-client subcommand takes."""
    parser.add_argument(
        "--client-config", help="client TOML (else SIGNER_CLIENT_CONFIG / SIGNER_*)"
    )
    parser.add_argument("--address", help="override the daemon address")
    return parser


def _version() -> str:
    """The installed distribution's version (what `pip show tuf-hsm-signer` says)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tuf-hsm-signer")
    except PackageNotFoundError:
        return "unknown (not installed; running from a source tree)"


class _VersionAction(argparse.Action):
    """``--version``: the version looked up when asked (importlib.metadata is no small
    import, and the daemon's supervisor does not need it)."""

    def __init__(self, option_strings: list[str], dest: str, help: str | None = None) -> None:
        super().__init__(
            option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0, help=help
        )

    def __call__(self, parser: argparse.ArgumentParser, *_args: Any) -> None:
        print(f"signerd {_version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="signerd", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action=_VersionAction, help="show the version and exit")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the daemon")
    serve.add_argument("--config", required=True)

    pki = sub.add_parser("dev-pki", help="make a development CA, server and client certificates")
    pki.add_argument("--out", required=True)
    pki.add_argument("--client", action="append", help="client identity (repeatable)")
    pki.add_argument("--server-name", action="append", help="server DNS name (repeatable)")

    check = sub.add_parser("check", help="compare the key registry with the token")
    check.add_argument("--config", required=True)

    keys = sub.add_parser("keys", help="manage keys through the running daemon")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)

    create = client_args(keys_sub.add_parser("create", help="generate a key inside the token"))
    create.add_argument("--label", required=True)
    create.add_argument("--algorithm", default="ecdsa-sha2-nistp256")
    create.add_argument("--role", required=True)
    create.add_argument("--repository", default="")
    create.add_argument("--quorum", action="store_true", help="sign only after M approvals")
    lst = client_args(keys_sub.add_parser("list", help="list keys"))
    lst.add_argument("--role")
    lst.add_argument("--repository")
    lst.add_argument("--state", choices=["active", "retired", "destroyed"])
    for name in ("show", "retire"):
        p = client_args(keys_sub.add_parser(name, help=f"{name} a key"))
        p.add_argument("key_id")
    certify = client_args(
        keys_sub.add_parser("certify", help="issue a self-signed certificate (notary root)")
    )
    certify.add_argument("key_id")
    certify.add_argument("--common-name", required=True, help="the GUN")
    certify.add_argument("--days", type=int, default=0, help="validity (default 3650)")
    certify.add_argument("--out", help="also write the PEM here")
    destroy = client_args(keys_sub.add_parser("destroy", help="remove a key from the token"))
    destroy.add_argument("key_id")
    destroy.add_argument("--confirm", required=True, help="repeat the key_id")
    notary = sub.add_parser("notary", help="housekeeping of notary-server's keys")
    notary_sub = notary.add_subparsers(dest="notary_command", required=True)
    retire = notary_sub.add_parser(
        "retire-unused", help="retire server-managed keys rotated away or of deleted repositories"
    )
    retire.add_argument("--config", required=True, help="the daemon's config (its state dir)")
    retire.add_argument("--days", type=float, default=30.0, help="unused for this long")
    retire.add_argument(
        "--idle-repositories",
        action="store_true",
        help="also every key of a GUN none of whose keys signed for --days",
    )
    retire.add_argument("--dry-run", action="store_true", help="list, change nothing")
    state = sub.add_parser("state", help="schema migrations and copies of the state")
    state_sub = state.add_subparsers(dest="state_command", required=True)
    migrate = state_sub.add_parser("migrate", help="apply pending schema migrations")
    migrate_where = migrate.add_mutually_exclusive_group(required=True)
    migrate_where.add_argument("--config", help="the daemon's config (its [state])")
    migrate_where.add_argument("--url", help="sqlite:///STATE_DIR or postgresql://USER@HOST/DB")
    copy = state_sub.add_parser("copy", help="copy a host's SQLite state into PostgreSQL")
    copy.add_argument("--from", dest="source", required=True, help="sqlite:///STATE_DIR")
    copy.add_argument("--to", required=True, help="postgresql://USER@HOST/DB (empty)")
    for p in (migrate, copy):
        p.add_argument("--password-file", help="the database password (else $SIGNER_DB_PASSWORD)")
    for extend in PARSER_EXTENSIONS:
        extend(sub)
    return parser


# Other modules (audit, quorum) add their subcommands here.
PARSER_EXTENSIONS: list[Callable[[Any], None]] = []


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] != ["serve"]:
        # The daemon's supervisor runs no other command: it imports none of them (nor what
        # they import), only what supervising needs (signer/supervisor.py).
        _load_extensions()
    args = build_parser().parse_args(argv)
    name = args.command + (f" {args.keys_command}" if args.command == "keys" else "")
    for attr in (
        "audit_command",
        "request_command",
        "notary_command",
        "state_command",
        "policy_command",
    ):
        if getattr(args, attr, None):
            name = f"{args.command} {getattr(args, attr)}"
    try:
        return COMMANDS[name](args)
    except (ConfigError, SignerError, ValueError, OSError) as exc:
        print(f"signerd: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        from signer_client import ClientError

        if isinstance(exc, ClientError):
            print(f"signerd: {exc}", file=sys.stderr)
            return 1
        raise


def _load_extensions() -> None:
    """Import optional command modules so they can register themselves."""
    import importlib

    for module in ("signer.audit.cli", "signer.quorum_cli", "signer.policy.cli"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


if __name__ == "__main__":
    # Run the imported module, not __main__: extensions register into ``signer.cli``.
    from signer.cli import main as _main

    raise SystemExit(_main())
