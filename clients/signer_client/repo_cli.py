"""``tuf-repo``: build, sign and publish a TUF repository whose keys live in signerd.

All repository logic is in ``signer_client.repo``; this module parses arguments, talks
to the daemon for key lookups and creation, and prints. Signing goes through the
``signer://`` Signer plugin, so TLS material comes from the standard client config
(``SIGNER_CLIENT_CONFIG`` or ``SIGNER_ADDRESS``/``SIGNER_CA``/``SIGNER_CERT``/``SIGNER_KEY``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TextIO

from tuf.api.exceptions import DownloadError
from tuf.api.exceptions import RepositoryError as TufRepositoryError

from signer_client.client import ALGORITHMS, SignerClient
from signer_client.config import ClientConfig
from signer_client.errors import ClientError
from signer_client.repo import (
    DaemonKeys,
    KeyRef,
    PublishResult,
    Repository,
    RepositoryError,
    RepoStore,
    RoleSpec,
    RoleStatus,
    UnderSignedError,
    collect_files,
    verify,
)
from signer_client.repo.adopt import adopt
from signer_client.repo.external import is_uri, key_ref
from signer_client.repo.offline import export_request, import_signatures, use_uris
from signer_client.repo.repository import (
    TOP_LEVEL,
    check_hashes,
    placeholder_keys,
    utc_now,
)
from signer_client.repo.store import read_metadata

_DURATION = re.compile(r"^(\d+)([smhdw]?)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "": 86400}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    path = Path(args.repo)
    fresh = args.func is cmd_init and not (path / ".tuf-repo.lock").exists()
    existed = path.exists()
    code = _dispatch(args)
    if fresh and code != 0 and not RepoStore(path).exists():
        _remove_new(path, existed)  # a failed init leaves the directory as it found it
    return code


def _remove_new(path: Path, existed: bool) -> None:
    (path / ".tuf-repo.lock").unlink(missing_ok=True)
    if not existed:
        try:
            path.rmdir()
        except OSError:
            pass


def _dispatch(args: argparse.Namespace) -> int:
    try:
        if args.func in _READ_ONLY:
            return int(args.func(args) or 0)
        with RepoStore(Path(args.repo)).lock():
            return int(args.func(args) or 0)
    except UnderSignedError as exc:
        for where, error in sorted(exc.errors.items()):
            print(f"could not sign {where}: {error}", file=sys.stderr)
        print(f"tuf-repo: error: {exc}", file=sys.stderr)
        return 1
    except (
        RepositoryError,
        ClientError,
        TufRepositoryError,
        DownloadError,
        ValueError,
        OSError,
    ) as exc:
        print(f"tuf-repo: error: {exc}", file=sys.stderr)
        return 1


# -- commands ----------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    """All input checked (with placeholder keys) before a key is created; a failure
    after that destroys the keys created and leaves no files (Repository.init)."""
    thresholds = {
        role: _count(n, f"--threshold {role}") for role, n in _pairs(args.threshold, "threshold")
    }
    expiry = {role: _duration(d) for role, d in _pairs(args.expires, "expires")}
    for role in thresholds:
        if role not in TOP_LEVEL:
            raise RepositoryError(f"--threshold {role}=...: not a top-level role")
    settings = _hash_settings(args)
    repo = _repo(args, new=True)
    repo.check_init({r: RoleSpec(placeholder_keys(1)) for r in TOP_LEVEL}, expiry)
    keys = _keys(args)
    given: dict[str, list[KeyRef]] = {role: [] for role in TOP_LEVEL}
    for role, key_id in _pairs(args.key, "key"):
        if role not in given:
            raise RepositoryError(f"--key {role}=...: not a top-level role")
        given[role].append(key_ref(key_id, role, keys))
    wanted = {
        r: max(0, thresholds.get(r, 1) - len(given[r])) if args.create_keys else 0
        for r in TOP_LEVEL
    }
    planned = {
        r: RoleSpec(given[r] + placeholder_keys(wanted[r]), thresholds.get(r, 1)) for r in TOP_LEVEL
    }
    repo.check_init(planned, expiry)
    created: list[tuple[str, KeyRef]] = []
    try:
        for role in TOP_LEVEL:
            for _ in range(wanted[role]):
                ref = keys.create(role, args.algorithm, repository=args.name)
                created.append((role, ref))
                given[role].append(ref)
        roles = {r: RoleSpec(given[r], thresholds.get(r, 1)) for r in TOP_LEVEL}
        result = repo.init(roles, expiry, server=keys.address, settings=settings)
    except Exception as exc:
        if repo.store.exists():  # staged, waiting for offline keys: the keys are in use
            _print_created(created)
            raise
        if not created:
            raise
        raise RepositoryError(_undo_keys(keys, [ref for _, ref in created], exc)) from None
    _print_created(created)
    _print_publish(result)
    return 0


def _print_created(created: list[tuple[str, KeyRef]]) -> None:
    for role, ref in created:
        print(f"created {role} key {ref.key_id}")


def _undo_keys(keys: DaemonKeys, created: list[KeyRef], exc: Exception) -> str:
    """Destroy keys made for a command that failed; the one-line error to show."""
    if isinstance(exc, UnderSignedError) and exc.errors:
        reasons = list(dict.fromkeys(exc.errors.values()))
        why = reasons[0] + (f" (and {len(reasons) - 1} more)" if len(reasons) > 1 else "")
        text = f"nothing published: {why}"
    else:
        text = str(exc)
    kept = []
    for ref in created:
        try:
            keys.client.destroy_key(ref.key_id, ref.key_id)
        except ClientError:
            kept.append(ref.key_id)
    if kept:
        return (
            f"{text}; {len(kept)} key(s) created for it could not be destroyed and remain "
            f"in the daemon: {', '.join(kept)}"
        )
    return f"{text}; the {len(created)} key(s) created for it were destroyed"


def cmd_targets_add(args: argparse.Namespace) -> int:
    repo = _repo(args)
    files = collect_files([Path(p) for p in args.paths], args.prefix)
    custom = _json_object(args.custom, "--custom") if args.custom is not None else None
    bar = None if args.quiet or len(files) < 100 else _ProgressBar(sys.stderr)
    counts = repo.add_targets(files, args.role, bar, hashes=_algorithms(args.hash), custom=custom)
    if bar:
        bar.done()
    _print_counts("added", counts)
    return 0


def cmd_targets_remove(args: argparse.Namespace) -> int:
    _print_counts("removed", _repo(args).remove_targets(args.targets, args.role))
    return 0


def cmd_delegate(args: argparse.Namespace) -> int:
    repo = _repo(args)
    if args.create_key:  # refuse bad input before a key is created
        count = max(len(args.key), args.threshold, 1)
        with repo.dry_run():
            _delegate(args, repo, placeholder_keys(count), quiet=True)
    refs = _delegation_keys(args, repo, args.name)
    _delegate(args, repo, refs)
    print("staged; run `tuf-repo publish`")
    return 0


def _delegate(
    args: argparse.Namespace, repo: Repository, refs: list[KeyRef], quiet: bool = False
) -> None:
    if args.hash_bins:
        bins = repo.delegate_hash_bins(args.name, args.hash_bins, refs, args.threshold, args.source)
        if not quiet:
            print(f"{args.source} delegates to {len(bins)} hash bins {bins[0]}..{bins[-1]}")
    else:
        repo.delegate(
            args.name,
            refs,
            args.threshold,
            args.source,
            paths=args.paths,
            path_hash_prefixes=args.path_hash_prefixes,
            terminating=args.terminating,
        )
        if not quiet:
            print(f"{args.source} delegates to {args.name}")


def cmd_sign(args: argparse.Namespace) -> int:
    repo = _repo(args)
    if args.uri or args.export or args.import_:
        done = _sign_offline(args, repo)
        if done is not None:
            return done
    errors = repo.sign(args.roles or None, args.key or None)
    for where, error in sorted(errors.items()):
        print(f"could not sign {where}: {error}", file=sys.stderr)
    print(f"{repo.stats.signatures} signature(s), {repo.stats.round_trips} signing round trip(s)")
    _print_status(repo, [s for s in repo.status() if s.staged_version is not None], True)
    return 1 if errors and not repo.stats.signatures else 0


def cmd_publish(args: argparse.Namespace) -> int:
    repo = _repo(args)
    bars: dict[str, _ProgressBar] = {}

    def progress(stage: str, done: int, total: int) -> None:
        """A bar per stage ("signing", "writing") once a publish is large enough to wait for."""
        if args.quiet or total < 50:
            return
        if stage not in bars:
            for bar in bars.values():
                bar.done()
            bars.clear()
            bars[stage] = _ProgressBar(sys.stderr, label=stage)
        bars[stage](done, total)

    try:
        result = repo.publish(args.role or None, sign=not args.no_sign, progress=progress)
    finally:
        for bar in bars.values():
            bar.done()
    _print_publish(result)
    return 0


def cmd_rotate(args: argparse.Namespace) -> int:
    repo = _repo(args)
    keys = _keys(args) if args.add_key or args.create_key else None
    add = [key_ref(k, args.role, keys) for k in args.add_key] if keys else []
    if args.create_key and keys is not None:
        with repo.dry_run():  # refuse bad input before the key is created
            repo.rotate(args.role, add + placeholder_keys(1), args.remove_key, args.threshold)
        role = args.role
        if role not in TOP_LEVEL:
            succinct = repo.find_delegation(role)[1]
            role = succinct.name_prefix if succinct is not None else role  # the bins' key role
        ref = keys.create(role, args.algorithm, repository=args.name)
        print(f"created {role} key {ref.key_id}")
        add.append(ref)
    staged = repo.rotate(args.role, add, args.remove_key, args.threshold)
    print(
        f"staged {', '.join(staged[:4])}{' ...' if len(staged) > 4 else ''}; run `tuf-repo publish`"
    )
    return 0


def cmd_bump(args: argparse.Namespace) -> int:
    staged = _repo(args).bump(args.roles)
    print(f"staged {_short_list(staged)} with new versions and expiries; run `tuf-repo publish`")
    return 0


def cmd_refresh(args: argparse.Namespace) -> int:
    result = _repo(args).refresh(args.margin, args.force)
    if result is None:
        print("nothing due: snapshot and timestamp are fresh")
    else:
        _print_publish(result)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    repo = _repo(args)
    if args.json:
        print(json.dumps(_status_json(repo), indent=2))
        return 0
    _print_status(repo, repo.status(), args.all)
    staged = repo.staged_roles()
    if staged:
        print(f"staged, not published: {_short_list(staged)}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    targets = list(args.target)
    directory = None
    if args.url and args.root and not args.all_targets:
        root = Path(args.root)  # a deployed copy: no local repository needed
    else:
        repo = _repo(args)
        root = Path(args.root) if args.root else repo.store.published_path("root", 1)
        directory = None if args.url else repo.store.path
        if args.all_targets:
            targets += _all_targets(repo)
    read_metadata(root)  # a file that is not metadata is named, not "Failed to deserialize"
    report = verify(root.read_bytes(), targets, directory=directory, url=args.url)
    versions = ", ".join(f"{role} v{v}" for role, v in report.versions.items())
    print(f"ok: ngclient trusts {versions}; {len(report.targets)} target(s) downloaded and checked")
    return 0


def _sign_offline(args: argparse.Namespace, repo: Repository) -> int | None:
    """``sign --uri/--import/--export`` (offline.py); None: go on signing as usual."""
    if args.uri:
        for key_id in use_uris(repo, args.uri, None):
            print(f"key {key_id[:8]}: signs with {repo.config.key_uris[key_id]}")
    for sigfile in args.import_ or []:
        for item in import_signatures(repo, Path(sigfile)):
            what = "imported" if item.new else "already had"
            print(f"{what} signature by {item.key_id[:8]} on {item.role} v{item.version}")
    if args.export:
        role, payload = args.export
        request = export_request(repo, role, Path(payload))
        print(
            f"wrote {payload} ({request['payload_length']} bytes to sign, sha256 "
            f"{request['payload_sha256'][:16]}...) and {payload}.json: {role} v{request['version']}"
        )
        for t in request["thresholds"]:
            waiting = ", ".join(k[:8] for k in t["keys"])
            print(
                f"  {t['label']}: {len(t['signed'])}/{t['threshold']}, "
                f"missing {t['missing']} (from {waiting or 'no one'})"
            )
        return 0
    if args.import_:
        _print_status(repo, [s for s in repo.status() if s.staged_version is not None], True)
        return 0
    return None


def cmd_adopt(args: argparse.Namespace) -> int:
    store = RepoStore(Path(args.repo))
    daemon = _keys(args) if any(not is_uri(k) for k in args.key) else None
    refs = [key_ref(k, None, daemon) for k in args.key]
    report = adopt(Path(args.source), store, refs, args.server or "", utc_now)
    roots = report.roots
    others = ", ".join(f"{r} v{report.versions[r]}" for r in ("targets", "snapshot", "timestamp"))
    delegated = len(report.versions) - 4
    print(
        f"adopted {args.source}: root v{roots[0]}..v{roots[-1]}, {others}, "
        f"{delegated} delegated role(s), {report.targets} target(s)"
    )
    print(
        f"  {report.metadata_files} metadata file(s) and {report.files_copied} target file(s) "
        f"copied; {len(report.files_missing)} target file(s) not under {args.source}/targets"
    )
    if report.key_uris:
        print(f"  remembered {report.key_uris} private key URI(s)")
    if report.expired:
        print(f"  expired: {', '.join(report.expired)} (bump and publish)")
    print("next: `tuf-repo rotate ROLE --create-key --remove-key OLD_KEY_ID`, then `publish`")
    return 0


def cmd_undelegate(args: argparse.Namespace) -> int:
    repo = _repo(args)
    gone = repo.undelegate(args.role)
    print(f"no longer delegated: {_short_list(gone)}; staged, run `tuf-repo publish`")
    return 0


def cmd_abort(args: argparse.Namespace) -> int:
    discarded = _repo(args).abort(args.roles or None, force=args.force)
    print(f"discarded staged {_short_list(discarded)}; published metadata unchanged")
    return 0


def cmd_expiry_set(args: argparse.Namespace) -> int:
    seconds = _duration(args.duration)
    repo = _repo(args)
    staged = repo.set_expiry(args.role, seconds)
    if staged:
        print(f"{args.role} expires {args.duration} after signing; staged {_short_list(staged)}")
        print("run `tuf-repo publish`")
    else:
        print(f"{args.role} expires {args.duration} after signing, from the next publish/refresh")
    return 0


def cmd_expiry_show(args: argparse.Namespace) -> int:
    repo = _repo(args)
    for role in TOP_LEVEL:
        print(f"{role:<10} {_period(int(repo.expiry(role).total_seconds()))}")
    for role, seconds in sorted(repo.config.expiry_seconds.items()):
        if role not in TOP_LEVEL:
            print(f"{role:<10} {_period(seconds)}")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    result = _repo(args).prune(args.keep, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    print(
        f"{verb} {len(result.metadata)} old metadata file(s) and {len(result.targets)} "
        f"unlisted target file(s) ({result.size} bytes); kept every root and the newest "
        f"{args.keep} snapshot(s)"
    )
    if args.dry_run:
        for path in result.metadata + result.targets:
            print(f"  {path}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    repo = _repo(args)
    changes = _hash_settings(args)
    if changes:
        for name, value in changes.items():
            setattr(repo.config, name, value)
        repo.store.save_config(repo.config)
    config = repo.config
    print(f"snapshot/timestamp meta lengths: {'on' if config.meta_length else 'off'}")
    print(f"snapshot/timestamp meta hashes: {', '.join(config.meta_hashes) or 'none'}")
    print(f"target hashes: {', '.join(config.target_hashes)}")
    if changes and (config.meta_length or config.meta_hashes):
        print("applies from the next publish (`tuf-repo refresh --force` for it now)")
    return 0


# -- helpers -----------------------------------------------------------------------------

_READ_ONLY = (cmd_status, cmd_verify)


def _repo(args: argparse.Namespace, new: bool = False) -> Repository:
    store = RepoStore(Path(args.repo))
    if not new:
        store.load_config()  # says "not a tuf-repo repository (run `init`)" if it is not
    return Repository(store)


def _keys(args: argparse.Namespace) -> DaemonKeys:
    store = RepoStore(Path(args.repo))
    address = args.server or (store.load_config().server if store.exists() else "") or None
    config = ClientConfig.from_env(address)
    return DaemonKeys(SignerClient(config), config.address)


def _delegation_keys(args: argparse.Namespace, repo: Repository, role: str) -> list[KeyRef]:
    keys = _keys(args) if args.key or args.create_key else None
    refs = [key_ref(k, role, keys) for k in args.key] if keys else []
    if args.create_key and keys is not None:
        while len(refs) < max(args.threshold, 1) or not refs:
            ref = keys.create(role, args.algorithm, repository=args.name_tag)
            print(f"created {role} key {ref.key_id}")
            refs.append(ref)
    return refs


def _all_targets(repo: Repository) -> list[str]:
    paths: list[str] = []
    for role in repo.all_roles():
        md = repo.published(role)
        if md is not None and role not in ("root", "snapshot", "timestamp"):
            paths.extend(md.signed.targets)
    return paths


def _pairs(values: Sequence[str] | None, option: str) -> list[tuple[str, str]]:
    out = []
    for value in values or []:
        role, sep, rest = value.partition("=")
        if not sep or not role or not rest:
            raise RepositoryError(f"--{option} {value!r}: want ROLE=VALUE")
        out.append((role, rest))
    return out


def _duration(text: str) -> int:
    """Seconds of a duration such as 365d or 12h, within what TUF metadata can use."""
    match = _DURATION.match(text.strip())
    if not match:
        raise RepositoryError(f"bad duration {text!r}: want e.g. 365d, 12h, 30m (days if no unit)")
    return int(match.group(1)) * _UNITS[match.group(2)]  # its range: check_expiry, per role


def _period(seconds: int) -> str:
    for unit, size in (("w", 7 * 86400), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _count(text: str, option: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise RepositoryError(f"{option}={text!r}: want a whole number, at least 1")
    return int(text)


def _algorithms(values: Sequence[str] | None) -> list[str] | None:
    """``--hash sha256 --hash sha512`` or ``--hash sha256,sha512``; None if not given."""
    if not values:
        return None
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


def _hash_settings(args: argparse.Namespace) -> dict[str, object]:
    """RepoConfig fields from --meta-length, --meta-hashes and --target-hashes, checked."""
    out: dict[str, object] = {}
    if getattr(args, "meta_length", None) is not None:
        out["meta_length"] = args.meta_length == "on"
    if getattr(args, "meta_hashes", None) is not None:
        names = [] if args.meta_hashes == "none" else _algorithms([args.meta_hashes]) or []
        out["meta_hashes"] = check_hashes(names, "--meta-hashes")
    if getattr(args, "target_hashes", None) is not None:
        names = _algorithms([args.target_hashes]) or []
        if not names:
            raise RepositoryError("--target-hashes: at least one algorithm")
        out["target_hashes"] = check_hashes(names, "--target-hashes")
    return out


def _json_object(text: str, option: str) -> dict[str, object]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise RepositoryError(f"{option}: not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise RepositoryError(f'{option}: want a JSON object such as {{"type": "wheel"}}')
    return value


def _status_json(repo: Repository) -> dict[str, object]:
    """``status --json``: every role (each hash bin too), for scripts and monitoring."""
    now = repo.now()
    return {
        "repository": str(repo.store.path),
        "now": now.isoformat().replace("+00:00", "Z"),
        "staged": repo.staged_roles(),
        "roles": [
            {
                "role": s.role,
                "published_version": s.published_version,
                "staged_version": s.staged_version,
                "expires": s.expires.isoformat().replace("+00:00", "Z"),
                "expired": s.expires <= now,
                "signed_enough": s.signed_enough,
                "thresholds": [
                    {
                        "label": c.label,
                        "threshold": c.threshold,
                        "signed": c.signed,
                        "unsigned": c.unsigned,
                        "missing": c.missing,
                    }
                    for c in s.checks
                ],
            }
            for s in repo.status()
        ],
    }


def _print_publish(result: PublishResult) -> None:
    for where, error in sorted(result.errors.items()):
        print(f"could not sign {where}: {error}", file=sys.stderr)
    if not result.published:
        print("nothing to publish")
        return
    roles = ", ".join(f"{r} v{v}" for r, v in list(result.published.items())[:6])
    more = len(result.published) - 6
    if more > 0:
        roles += f" and {more} more"
    print(
        f"published {roles} ({result.stats.signatures} signatures, "
        f"{result.stats.round_trips} signing round trip(s))"
    )


def _print_counts(verb: str, counts: dict[str, int]) -> None:
    total = sum(counts.values())
    print(
        f"{verb} {total} target(s) in {_short_list(sorted(counts))}; staged, run `tuf-repo publish`"
    )


def _print_status(repo: Repository, statuses: list[RoleStatus], show_all: bool) -> None:
    now = repo.now()
    print(f"{'ROLE':<14} {'VERSION':>7} {'STAGED':>6}  {'EXPIRES':<20} SIGNATURES")
    bins: list[RoleStatus] = []
    for s in statuses:
        is_bin = s.role not in TOP_LEVEL and repo.find_delegation(s.role)[1] is not None
        if is_bin and not show_all and s.signed_enough and s.staged_version is None:
            bins.append(s)
            continue
        print(_status_line(s, now))
    if bins:
        earliest = min(s.expires for s in bins)
        print(
            f"{bins[0].role}..{bins[-1].role}: {len(bins)} hash bins, published and signed, "
            f"earliest expiry {_when(earliest, now)} (--all lists them)"
        )


def _status_line(s: RoleStatus, now: datetime) -> str:
    published = str(s.published_version) if s.published_version is not None else "-"
    staged = str(s.staged_version) if s.staged_version is not None else "-"
    sigs = []
    for check in s.checks:
        text = f"{len(check.signed)}/{check.threshold}"
        if len(s.checks) > 1:
            text = f"{check.label} {text}"
        if not check.ok:
            waiting = ", ".join(k[:8] for k in check.unsigned)
            text += f" MISSING {check.missing} (from {waiting})"
        sigs.append(text)
    return f"{s.role:<14} {published:>7} {staged:>6}  {_when(s.expires, now):<20} {'; '.join(sigs)}"


def _when(expires: datetime, now: datetime) -> str:
    text = expires.strftime("%Y-%m-%d %H:%M")
    return text + (" EXPIRED" if expires <= now else "")


def _short_list(items: Sequence[str]) -> str:
    return (
        ", ".join(items) if len(items) <= 6 else f"{', '.join(items[:5])} and {len(items) - 5} more"
    )


class _ProgressBar:
    """A one-line progress bar on stderr for large target sets."""

    def __init__(self, out: TextIO, width: int = 40, label: str = "") -> None:
        self.out = out
        self.width = width
        self.shown = -1
        self.label = f"{label} " if label else ""

    def __call__(self, done: int, total: int) -> None:
        filled = self.width * done // total
        if filled == self.shown and done != total:
            return
        self.shown = filled
        bar = "#" * filled + "-" * (self.width - filled)
        self.out.write(f"\r{self.label}[{bar}] {done}/{total}")
        self.out.flush()

    def done(self) -> None:
        self.out.write("\n")
        self.out.flush()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tuf-repo",
        description="Build, sign and publish a TUF repository with keys held by signerd.",
    )
    p.add_argument("-C", "--repo", default=".", help="repository directory (default: .)")
    p.add_argument("--server", help="signerd HOST:PORT for key lookups (default: from config)")
    sub = p.add_subparsers(required=True, metavar="COMMAND")

    def hash_options(cmd: argparse.ArgumentParser) -> None:
        cmd.add_argument(
            "--meta-length",
            choices=("on", "off"),
            help="list file lengths in snapshot/timestamp meta (default off)",
        )
        cmd.add_argument(
            "--meta-hashes",
            metavar="ALG[,ALG]|none",
            help="list file hashes in snapshot/timestamp meta: sha256, sha512 (default none)",
        )
        cmd.add_argument(
            "--target-hashes",
            metavar="ALG[,ALG]",
            help="hashes of new targets: sha256 and/or sha512 (default sha256)",
        )

    def key_options(cmd: argparse.ArgumentParser) -> None:
        cmd.add_argument("--algorithm", default="ecdsa-sha2-nistp256", choices=sorted(ALGORITHMS))
        cmd.add_argument("--name", default="", help="repository name recorded on new keys")

    c = sub.add_parser("init", help="create root, targets, snapshot, timestamp v1 and publish")
    c.add_argument("--key", action="append", metavar="ROLE=KEY_ID", help="a daemon key for ROLE")
    c.add_argument(
        "--create-keys",
        action="store_true",
        help="create the keys a role lacks for its threshold in the daemon",
    )
    c.add_argument("--threshold", action="append", metavar="ROLE=N")
    c.add_argument(
        "--expires",
        action="append",
        metavar="ROLE=DURATION",
        help="expiry period, e.g. root=365d, timestamp=1d, targets=90d",
    )
    hash_options(c)
    key_options(c)
    c.set_defaults(func=cmd_init)

    targets = sub.add_parser("targets", help="add or remove target files").add_subparsers(
        required=True, metavar="ACTION"
    )
    c = targets.add_parser("add", help="hash files or directories and list them as targets")
    c.add_argument("paths", nargs="+")
    c.add_argument("--role", help="targets role to list them in (default: targets, or hash bin)")
    c.add_argument("--prefix", default="", help="prepended to each target path, e.g. 'pkgs/'")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    c.add_argument(
        "--hash",
        action="append",
        metavar="ALG",
        help="sha256 and/or sha512 (default: the repository's target hashes)",
    )
    c.add_argument("--custom", metavar="JSON", help="custom metadata object for these targets")
    c.set_defaults(func=cmd_targets_add)
    c = targets.add_parser("remove", help="stop listing targets")
    c.add_argument("targets", nargs="+", metavar="TARGET_PATH")
    c.add_argument("--role")
    c.set_defaults(func=cmd_targets_remove)

    c = sub.add_parser("delegate", help="delegate paths (or hash bins) to a new targets role")
    c.add_argument("name", help="role name (for --hash-bins: the bin name prefix)")
    c.add_argument("--from", dest="source", default="targets", help="delegating role")
    how = c.add_mutually_exclusive_group(required=True)
    how.add_argument("--paths", nargs="+", metavar="PATTERN")
    how.add_argument("--path-hash-prefixes", nargs="+", metavar="HEX")
    how.add_argument("--hash-bins", type=int, metavar="N", help="N succinct hash bins (TAP 15)")
    c.add_argument("--terminating", action="store_true")
    c.add_argument("--threshold", type=int, default=1)
    c.add_argument("--key", action="append", default=[], metavar="KEY_ID")
    c.add_argument("--create-key", action="store_true", help="create keys up to the threshold")
    c.add_argument("--algorithm", default="ecdsa-sha2-nistp256", choices=sorted(ALGORITHMS))
    c.add_argument("--name-tag", default="", help="repository name recorded on new keys")
    c.set_defaults(func=cmd_delegate)

    c = sub.add_parser("sign", help="add signatures to staged roles (threshold signing)")
    c.add_argument("roles", nargs="*", metavar="ROLE", help="default: every staged role")
    c.add_argument("--key", action="append", metavar="KEY_ID", help="sign only with these keys")
    c.add_argument(
        "--uri",
        action="append",
        metavar="URI",
        help="private key URI of a key the repository lists (remembered), e.g. file2:PATH",
    )
    c.add_argument(
        "--export",
        nargs=2,
        metavar=("ROLE", "FILE"),
        help="write the bytes to sign to FILE and what is missing to FILE.json (offline keys)",
    )
    c.add_argument(
        "--import",
        dest="import_",
        action="append",
        metavar="SIGFILE",
        help="add signatures made elsewhere, each verified first",
    )
    c.set_defaults(func=cmd_sign)

    c = sub.add_parser("adopt", help="take over a python-tuf, go-tuf or RSTUF repository")
    c.add_argument("source", metavar="DIR", help="its directory (metadata/ and targets/)")
    c.add_argument(
        "--key",
        action="append",
        default=[],
        metavar="URI",
        help="private key URI of one of its keys, e.g. file2:PATH (remembered)",
    )
    c.set_defaults(func=cmd_adopt)

    c = sub.add_parser("publish", help="bump snapshot and timestamp, sign, write metadata")
    c.add_argument("--role", action="append", help="publish only these staged roles")
    c.add_argument(
        "--no-sign",
        action="store_true",
        help="sign only snapshot/timestamp; other roles must already be signed",
    )
    c.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    c.set_defaults(func=cmd_publish)

    c = sub.add_parser("rotate", help="change a role's keys or threshold (root N+1 for top-level)")
    c.add_argument(
        "role", help="root, targets, snapshot, timestamp, a delegated role or bin prefix"
    )
    c.add_argument("--add-key", action="append", default=[], metavar="KEY_ID")
    c.add_argument("--create-key", action="store_true", help="create a new key and add it")
    c.add_argument("--remove-key", action="append", default=[], metavar="KEY_ID")
    c.add_argument("--threshold", type=int)
    key_options(c)
    c.set_defaults(func=cmd_rotate)

    c = sub.add_parser("bump", help="new version and expiry for roles (before they expire)")
    c.add_argument("roles", nargs="+", metavar="ROLE", help="a role, or a hash-bin prefix")
    c.set_defaults(func=cmd_bump)

    c = sub.add_parser("refresh", help="re-sign snapshot/timestamp before they expire (cron)")
    c.add_argument(
        "--margin",
        type=float,
        default=0.5,
        help="re-sign when less than this fraction of the period is left",
    )
    c.add_argument("--force", action="store_true")
    c.set_defaults(func=cmd_refresh)

    c = sub.add_parser("status", help="versions, expiries and missing signatures")
    c.add_argument("--all", action="store_true", help="list every hash bin")
    c.add_argument("--json", action="store_true", help="every role as JSON, for scripts")
    c.set_defaults(func=cmd_status)

    c = sub.add_parser("undelegate", help="remove a delegation (a bin prefix: all its bins)")
    c.add_argument("role")
    c.set_defaults(func=cmd_undelegate)

    c = sub.add_parser("abort", help="discard staged changes, signed or not")
    c.add_argument("roles", nargs="*", metavar="ROLE", help="default: everything staged")
    c.add_argument(
        "--force", action="store_true", help="also a staged root that carries signatures"
    )
    c.set_defaults(func=cmd_abort)

    expiry = sub.add_parser("expiry", help="expiry periods").add_subparsers(
        required=True, metavar="ACTION"
    )
    c = expiry.add_parser("set", help="a new period for a role (staged for re-signing)")
    c.add_argument("role", help="a role, or a hash-bin prefix")
    c.add_argument("duration", help="e.g. 30d, 12h (days if no unit)")
    c.set_defaults(func=cmd_expiry_set)
    c = expiry.add_parser("show", help="the period of each role")
    c.set_defaults(func=cmd_expiry_show)

    c = sub.add_parser("prune", help="remove old metadata and unlisted target files")
    c.add_argument("--keep", type=int, required=True, metavar="N", help="snapshots to keep")
    c.add_argument("--dry-run", action="store_true", help="list what would go")
    c.set_defaults(func=cmd_prune)

    c = sub.add_parser("config", help="show or change meta lengths/hashes, target hashes")
    hash_options(c)
    c.set_defaults(func=cmd_config)

    c = sub.add_parser("verify", help="run python-tuf's ngclient over the published files")
    c.add_argument("--root", help="trusted root to start from (default: metadata/1.root.json)")
    c.add_argument("--target", action="append", default=[], help="download and check a target")
    c.add_argument("--all-targets", action="store_true", help="download and check every target")
    c.add_argument("--url", help="verify a deployed copy at this base URL instead")
    c.set_defaults(func=cmd_verify)
    return p


if __name__ == "__main__":
    sys.exit(main())
