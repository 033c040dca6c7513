"""``signer-trust``: Docker Content Trust with every key in signerd's token.

The verbs of ``docker trust`` (and of the notary CLI where docker has none), against a
notary-server, with every signature made by the daemon over mutual TLS:

    signer-trust -s https://notary:4443 init registry:5000/app
    signer-trust signer add ci registry:5000/app --create-key
    signer-trust sign registry:5000/app:1.0
    signer-trust inspect registry:5000/app --pretty

Exit status: 0 done, 1 error (one line on stderr, nothing published), 2 usage,
3 waiting for quorum approvals (what is pending is printed).
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import getpass
import json
import os
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from signer_client.client import SignerClient
from signer_client.config import ClientConfig
from signer_client.errors import ClientError
from signer_client.trust.inspect import inspect_json, inspect_pretty
from signer_client.trust.keys import DaemonKeys
from signer_client.trust.legacy import LegacyKeyError, LegacyRootKey, load_legacy_root_key
from signer_client.trust.metadata import PublicKey, public_key_from_pem
from signer_client.trust.notary_server import NotaryServerClient, NotaryServerError
from signer_client.trust.registry import (
    RegistryClient,
    RegistryError,
    parse_reference,
)
from signer_client.trust.repo import (
    DEFAULT_EXPIRY,
    Outcome,
    TagToSign,
    TrustError,
    TrustRepository,
    TrustSettings,
)
from signer_client.trust.state import TrustDir, TrustDirError, default_trust_dir

EXIT_PENDING = 3
_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
_DURATION = re.compile(r"(\d+)([hdwy])")
_UNIT_DAYS = {"h": 1 / 24, "d": 1, "w": 7, "y": 365}


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except (
        TrustError,
        TrustDirError,
        LegacyKeyError,
        NotaryServerError,
        RegistryError,
        ClientError,
        OSError,
        ValueError,
    ) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"signer-trust: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("signer-trust: interrupted; nothing more is published", file=sys.stderr)
        return 130


# -- commands --------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    repo = _repo(args, args.gun)
    return _report(repo.init(args.local_snapshot, args.root_key or "", args.quorum))


def cmd_signer_add(args: argparse.Namespace) -> int:
    keys = [public_key_from_pem(Path(p).read_bytes()) for p in args.key]
    if len(args.guns) == 1:
        return _report(_repo(args, args.guns[0]).add_signer(args.name, keys, args.create_key))
    failed = []
    for gun in args.guns:
        try:
            _report(_repo(args, gun).add_signer(args.name, keys, args.create_key))
        except (TrustError, NotaryServerError, ClientError) as exc:
            print(f"signer-trust: error: {gun}: {exc}", file=sys.stderr)
            failed.append(gun)
    if failed:
        print(f"signer-trust: error: failed to add signer to: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def cmd_signer_remove(args: argparse.Namespace) -> int:
    return _report(_repo(args, args.gun).remove_signer(args.name, args.force))


def cmd_sign(args: argparse.Namespace) -> int:
    refs = [parse_reference(image) for image in args.images]
    guns = {ref.gun for ref in refs}
    if len(guns) != 1:
        raise TrustError("sign tags of one repository at a time (one publish per GUN)")
    if args.digest or args.size is not None:
        if not args.digest or args.size is None:
            raise TrustError("--digest and --size go together")
        if len(refs) != 1:
            raise TrustError("--digest and --size sign exactly one tag")
        match = _DIGEST.fullmatch(args.digest)
        if match is None:
            raise TrustError(f"--digest {args.digest!r} is not sha256:<64 hex digits>")
        if args.size <= 0:
            raise TrustError("--size must be a positive number of bytes")
        tags = [TagToSign(refs[0].tag, bytes.fromhex(match.group(1)), args.size)]
    else:
        registry = _registry(args)
        tags = []
        for ref in refs:  # every tag resolves before anything is signed
            manifest = registry.resolve(ref)
            match = _DIGEST.fullmatch(manifest.digest)
            if match is None:
                raise TrustError(f"{ref}: the registry answered digest {manifest.digest}")
            tags.append(TagToSign(ref.tag, bytes.fromhex(match.group(1)), manifest.size))
    return _report(_repo(args, refs[0].gun).sign(tags, args.signer or ""))


def cmd_revoke(args: argparse.Namespace) -> int:
    ref = parse_reference(args.image)
    return _report(_repo(args, ref.gun).revoke(ref.tag))


def cmd_inspect(args: argparse.Namespace) -> int:
    results = []
    for name in args.images:
        ref = parse_reference(name, require_tag=False)
        repo = _repo(args, ref.gun, signer=False)
        results.append((name, ref.tag, repo, repo.load()))
    if args.pretty:
        print("\n\n".join(inspect_pretty(n, t, r, c) for n, t, r, c in results))
    else:
        print(json.dumps([inspect_json(n, t, r, c) for n, t, r, c in results], indent=4))
    return 0


def cmd_rotate(args: argparse.Namespace) -> int:
    managed = True if args.server_managed else (False if args.local else None)
    loader = None
    if args.old_root_key:
        path = Path(args.old_root_key)
        passphrase = os.environ.get("NOTARY_ROOT_PASSPHRASE")
        if passphrase is None and sys.stdin.isatty():
            passphrase = getpass.getpass(f"passphrase for {path}: ")

        def loader(keys: Iterable[PublicKey]) -> LegacyRootKey:
            return load_legacy_root_key(path, passphrase, keys)

    return _report(_repo(args, args.gun).rotate(args.role, managed, loader))


def cmd_delete(args: argparse.Namespace) -> int:
    repo = _repo(args, args.gun, signer=args.retire_keys)
    return _report(repo.delete(args.remote, args.retire_keys))


def cmd_ceremony(args: argparse.Namespace) -> int:
    repo = _repo(args, args.gun)
    if args.action == "abort":
        return _report(repo.abort_ceremony())
    return _report(repo.finish_ceremony())


# -- wiring ----------------------------------------------------------------------------


def _report(outcome: Outcome) -> int:
    for line in outcome.lines:
        print(line)
    return EXIT_PENDING if outcome.pending is not None else 0


def _repo(args: argparse.Namespace, gun_text: str, signer: bool = True) -> TrustRepository:
    gun = _gun(gun_text)
    username, password = _server_credentials(args)
    server = NotaryServerClient(
        args.server,
        ca_file=Path(args.tlscacert) if args.tlscacert else None,
        username=username,
        password=password,
    )
    client = _signer_client(args) if signer else _lazy_signer_client(args)
    return TrustRepository(
        gun,
        server,
        DaemonKeys(client, gun),
        TrustDir(Path(args.trust_dir)),
        TrustSettings(expiry=_expiries(args.expires)),
    )


def _gun(text: str) -> str:
    """A GUN as docker names it: the image name without tag (``registry:5000/team/app``)."""
    ref = parse_reference(text, require_tag=False)
    if ref.tag or ref.digest:
        raise TrustError(f"{text!r}: give the repository without a tag")
    return ref.gun


def _signer_client(args: argparse.Namespace) -> SignerClient:
    if args.signer_config:
        config = ClientConfig.from_file(Path(args.signer_config))
    else:
        config = ClientConfig.from_env(args.signer_address)
    return SignerClient(config)


class _LazySigner:
    """Read-only verbs (inspect) touch the daemon only if the repository's keys are asked."""

    def __init__(self, args: argparse.Namespace) -> None:
        self._args = args
        self._client: SignerClient | None = None

    def __getattr__(self, name: str) -> object:
        if self._client is None:
            try:
                self._client = _signer_client(self._args)
            except ValueError:
                return _no_keys(name)
        return getattr(self._client, name)


def _no_keys(name: str) -> object:
    if name == "list_keys":
        return lambda **_: []
    raise TrustError("no daemon configured (--signer-config or SIGNER_CLIENT_CONFIG)")


def _lazy_signer_client(args: argparse.Namespace) -> SignerClient:
    return _LazySigner(args)  # type: ignore[return-value]


def _server_credentials(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """notary-server token auth: --username with SIGNER_TRUST_PASSWORD, or NOTARY_AUTH."""
    if args.username:
        password = os.environ.get("SIGNER_TRUST_PASSWORD")
        if password is None:
            raise TrustError("--username needs the password in SIGNER_TRUST_PASSWORD")
        return args.username, password
    encoded = os.environ.get("NOTARY_AUTH")
    if encoded:
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except ValueError:
            raise TrustError("NOTARY_AUTH is not base64 of USER:PASSWORD") from None
        return user, password
    return None, None


def _registry(args: argparse.Namespace) -> RegistryClient:
    password = os.environ.get("REGISTRY_PASSWORD") if args.registry_username else None
    if args.registry_username and password is None:
        raise TrustError("--registry-username needs the password in REGISTRY_PASSWORD")
    return RegistryClient(
        scheme="http" if args.registry_plain_http else "https",
        ca_file=Path(args.registry_ca) if args.registry_ca else None,
        username=args.registry_username,
        password=password,
    )


def _expiries(pairs: Sequence[str]) -> dict[str, dt.timedelta]:
    expiry = dict(DEFAULT_EXPIRY)
    for pair in pairs:
        role, sep, text = pair.partition("=")
        if not sep or role not in expiry:
            known = ", ".join(expiry)
            raise TrustError(f"--expires {pair!r}: ROLE=DURATION with ROLE one of {known}")
        match = _DURATION.fullmatch(text)
        if match is None or int(match.group(1)) == 0:
            raise TrustError(f"--expires {pair!r}: a duration like 90d, 12w, 3y or 36h")
        days = int(match.group(1)) * _UNIT_DAYS[match.group(2)]
        if days > 36500:
            raise TrustError(f"--expires {pair!r}: more than 100 years")
        expiry[role] = dt.timedelta(days=days)
    return expiry


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="signer-trust",
        description="Docker Content Trust with root, targets and signer keys in signerd.",
    )
    p.add_argument(
        "-s",
        "--server",
        default=os.environ.get("SIGNER_TRUST_SERVER")
        or os.environ.get("DOCKER_CONTENT_TRUST_SERVER")
        or "https://notary-server:4443",
        help="notary-server URL (env SIGNER_TRUST_SERVER, DOCKER_CONTENT_TRUST_SERVER)",
    )
    p.add_argument("--tlscacert", help="CA bundle that signed notary-server's certificate")
    p.add_argument(
        "-d",
        "--trust-dir",
        default=str(default_trust_dir()),
        help="where trusted roots are kept (default ~/.signer-trust; never any key)",
    )
    p.add_argument("--username", help="notary-server token auth user (SIGNER_TRUST_PASSWORD)")
    p.add_argument("--signer-config", help="signerd client config (default SIGNER_CLIENT_CONFIG)")
    p.add_argument("--signer-address", help="signerd HOST:PORT (overrides the config)")
    p.add_argument("--registry-ca", help="CA bundle for the image registry")
    p.add_argument(
        "--registry-plain-http", action="store_true", help="reach the registry over plain HTTP"
    )
    p.add_argument("--registry-username", help="registry user (password in REGISTRY_PASSWORD)")
    p.add_argument(
        "--expires",
        action="append",
        default=[],
        metavar="ROLE=DURATION",
        help="expiry of new metadata: root, targets, snapshot, delegation (e.g. targets=90d)",
    )
    sub = p.add_subparsers(metavar="COMMAND")

    c = sub.add_parser(
        "init", help="create a trusted repository; root and targets keys in the token"
    )
    c.add_argument("gun", metavar="GUN")
    c.add_argument(
        "--local-snapshot", action="store_true", help="snapshot key in the token, not notary-server"
    )
    c.add_argument("--root-key", metavar="KEY_ID", help="an existing daemon root key (e.g. quorum)")
    c.add_argument("--quorum", action="store_true", help="create the root key as a quorum key")
    c.set_defaults(func=cmd_init)

    signer = sub.add_parser("signer", help="manage who can sign tags").add_subparsers(
        metavar="ACTION", required=True
    )
    c = signer.add_parser("add", help="add a signer (targets/NAME and targets/releases)")
    c.add_argument("name", metavar="NAME")
    c.add_argument("guns", nargs="+", metavar="GUN")
    how = c.add_mutually_exclusive_group(required=True)
    how.add_argument(
        "--key", action="append", default=[], metavar="PEM", help="public key or certificate"
    )
    how.add_argument(
        "--create-key", action="store_true", help="create the signer's key in the token"
    )
    c.set_defaults(func=cmd_signer_add)
    c = signer.add_parser("remove", help="remove a signer")
    c.add_argument("name", metavar="NAME")
    c.add_argument("gun", metavar="GUN")
    c.add_argument("--force", action="store_true", help="even if it is the last releases signer")
    c.set_defaults(func=cmd_signer_remove)

    c = sub.add_parser("sign", help="sign IMAGE:TAG... (digest and size from the registry)")
    c.add_argument("images", nargs="+", metavar="IMAGE:TAG", help="tags of one repository")
    c.add_argument("--digest", help="sha256:... instead of asking the registry")
    c.add_argument("--size", type=int, help="manifest size in bytes (with --digest)")
    c.add_argument("--signer", help="sign as this signer only (default: every role we hold)")
    c.set_defaults(func=cmd_sign)

    c = sub.add_parser("revoke", help="remove the signature of IMAGE:TAG")
    c.add_argument("image", metavar="IMAGE:TAG")
    c.set_defaults(func=cmd_revoke)

    c = sub.add_parser("inspect", help="signed tags, signers and keys (JSON like docker)")
    c.add_argument("images", nargs="+", metavar="IMAGE[:TAG]")
    c.add_argument(
        "--pretty", action="store_true", help="tables, as `docker trust inspect --pretty`"
    )
    c.set_defaults(func=cmd_inspect)

    key = sub.add_parser("key", help="key operations").add_subparsers(
        metavar="ACTION", required=True
    )
    c = key.add_parser("rotate", help="replace a role's key (root: signed by old and new)")
    c.add_argument("role", choices=["root", "targets", "snapshot", "timestamp"])
    c.add_argument("gun", metavar="GUN")
    where = c.add_mutually_exclusive_group()
    where.add_argument("-r", "--server-managed", action="store_true", help="notary-server holds it")
    where.add_argument("--local", action="store_true", help="the token holds it (snapshot)")
    c.add_argument(
        "--old-root-key",
        metavar="FILE",
        help="migration: the notary root key file that signs this one rotation "
        "(passphrase in NOTARY_ROOT_PASSPHRASE or prompted)",
    )
    c.set_defaults(func=cmd_rotate)

    c = sub.add_parser("delete", help="forget a repository (and --remote: delete it on the server)")
    c.add_argument("gun", metavar="GUN")
    c.add_argument("--remote", action="store_true", help="delete the trust data on notary-server")
    c.add_argument("--retire-keys", action="store_true", help="retire the GUN's daemon keys too")
    c.set_defaults(func=cmd_delete)

    c = sub.add_parser("ceremony", help="finish or abort a root ceremony waiting for a quorum")
    c.add_argument("action", choices=["finish", "abort"])
    c.add_argument("gun", metavar="GUN")
    c.set_defaults(func=cmd_ceremony)
    return p


if __name__ == "__main__":
    sys.exit(main())
