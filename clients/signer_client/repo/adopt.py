"""``adopt``: take over a repository made by python-tuf, go-tuf or RSTUF.

They share one on-disk layout, which is also ``tuf-repo``'s: ``N.root.json`` for every
root version, ``N.ROLE.json`` for the other roles (consistent snapshots),
``timestamp.json``, and target files under ``targets/`` as ``DIR/HASH.NAME`` (or, as
some tools leave them, plain ``DIR/NAME``). The source is a directory holding
``metadata/`` (python-tuf, RSTUF) or the metadata files themselves (go-tuf's
``repository/``); ``targets/`` beside them if the tool keeps target files at all (RSTUF
does not: its artifacts are served from elsewhere, and that is fine).

What adopting checks, before anything is written, is what a client would: every root
is signed by its predecessor's threshold and its own, timestamp, snapshot and every
role snapshot lists verify against their delegator, and each target file found matches
its length and hashes. Then the metadata is copied as it is, every version kept (no
re-signing: published bytes never change), so clients that trust any old root keep
updating. Signing moves into the daemon afterwards by ``rotate``: root N+1 is signed by
the old root keys (given here as URIs, e.g. ``file2:``, and remembered) and the new.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, Root, Snapshot, TargetFile, Targets, Timestamp

from signer_client.repo.errors import RepositoryError
from signer_client.repo.signing import KeyRef
from signer_client.repo.store import RepoConfig, RepoStore

_VERSIONED = re.compile(r"^(\d+)\.(.+)\.json$")


class AdoptError(RepositoryError):
    """The source is not a repository ``tuf-repo`` can take over; nothing was written."""


@dataclass
class AdoptReport:
    """What was taken over."""

    roots: list[int] = field(default_factory=list)
    versions: dict[str, int] = field(default_factory=dict)  # role -> current version
    targets: int = 0
    files_copied: int = 0
    files_missing: list[str] = field(default_factory=list)
    metadata_files: int = 0
    expired: list[str] = field(default_factory=list)
    key_uris: int = 0


def metadata_dir_of(source: Path) -> Path:
    """``SOURCE/metadata`` (python-tuf, RSTUF) or ``SOURCE`` itself (go-tuf)."""
    for candidate in (source / "metadata", source):
        if (candidate / "timestamp.json").is_file():
            return candidate
    raise AdoptError(f"{source}: no timestamp.json in it or in {source / 'metadata'}")


def adopt(
    source: Path,
    store: RepoStore,
    key_uris: Sequence[KeyRef] = (),
    server: str = "",
    now: Any = None,
) -> AdoptReport:
    """Check ``source`` as a client would, then make ``store`` a repository holding it."""
    source = Path(source)
    meta_dir = metadata_dir_of(source)
    in_place = store.path.resolve() == source.resolve()
    if store.exists():
        raise AdoptError(f"{store.path} is already a tuf-repo repository")
    if in_place and meta_dir != store.metadata_dir:
        raise AdoptError(f"{source}: adopting in place needs the metadata/ layout")
    if not in_place and store.metadata_dir.exists() and any(store.metadata_dir.iterdir()):
        raise AdoptError(f"{store.metadata_dir} already has files in it")
    report = AdoptReport()
    roots = _load_roots(meta_dir, report)
    root = roots[-1].signed
    if not root.consistent_snapshot:
        raise AdoptError(
            f"{meta_dir}: root v{root.version} has consistent_snapshot false; tuf-repo "
            "publishes consistent snapshots only (rotate root to consistent snapshots first)"
        )
    loaded = _load_current(meta_dir, root, report)
    used = {k for md in [*roots, *loaded.values()] for k in _keys_listed(md)}
    for ref in key_uris:
        if ref.key_id not in used:
            raise AdoptError(f"{ref.uri} is key {ref.key_id[:8]}, which no role of {source} uses")
    target_dir = source / "targets"
    copies = _plan_targets(loaded, target_dir, store, report)
    stamp = now() if now else None
    for role, md in {"root": roots[-1], **loaded}.items():
        if stamp is not None and md.signed.is_expired(stamp):
            report.expired.append(role)

    # everything checked: now write
    if not in_place:
        store.metadata_dir.mkdir(parents=True, exist_ok=True)
        for path in sorted(meta_dir.iterdir()):
            if _VERSIONED.match(path.name) or path.name == "timestamp.json":
                shutil.copyfile(path, store.metadata_dir / path.name)
                report.metadata_files += 1
    for src, dest in copies:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
        report.files_copied += 1
    config = RepoConfig(key_uris={ref.key_id: ref.uri for ref in key_uris}, server=server)
    report.key_uris = len(config.key_uris)
    store.save_config(config)
    return report


def _load(path: Path, expected: type) -> Metadata[Any]:
    try:
        md: Metadata[Any] = Metadata.from_bytes(path.read_bytes())
    except OSError as exc:
        raise AdoptError(f"{path}: {exc.strerror or exc}") from None
    except Exception as exc:
        raise AdoptError(f"{path}: not TUF metadata ({type(exc).__name__}: {exc})") from None
    if not isinstance(md.signed, expected):
        raise AdoptError(f"{path}: a {md.signed.type}, not {expected.type}")  # type: ignore[attr-defined]
    return md


def _verify(delegator: Any, role: str, md: Metadata[Any], path: Path) -> None:
    try:
        delegator.verify_delegate(role, md.signed_bytes, md.signatures)
    except UnsignedMetadataError as exc:
        raise AdoptError(f"{path.name}: {exc}") from None


def _load_roots(meta_dir: Path, report: AdoptReport) -> list[Metadata[Any]]:
    """Every root version, checked as a client following the chain would."""
    versions = sorted(
        int(m.group(1))
        for m in (_VERSIONED.match(p.name) for p in meta_dir.iterdir())
        if m and m.group(2) == "root"
    )
    if not versions:
        raise AdoptError(f"{meta_dir}: no N.root.json files")
    if versions != list(range(versions[0], versions[-1] + 1)):
        raise AdoptError(f"{meta_dir}: root versions {versions} have gaps")
    roots: list[Metadata[Any]] = []
    for version in versions:
        path = meta_dir / f"{version}.root.json"
        md = _load(path, Root)
        if md.signed.version != version:
            raise AdoptError(f"{path.name} holds root version {md.signed.version}")
        if roots:
            _verify(roots[-1].signed, "root", md, path)
        _verify(md.signed, "root", md, path)
        roots.append(md)
    report.roots = versions
    return roots


def _load_current(meta_dir: Path, root: Root, report: AdoptReport) -> dict[str, Metadata[Any]]:
    """timestamp, snapshot and every role snapshot lists, each verified by its delegator."""
    ts_path = meta_dir / "timestamp.json"
    timestamp = _load(ts_path, Timestamp)
    _verify(root, "timestamp", timestamp, ts_path)
    snap_path = meta_dir / f"{timestamp.signed.snapshot_meta.version}.snapshot.json"
    snapshot = _load(snap_path, Snapshot)
    _verify(root, "snapshot", snapshot, snap_path)
    loaded: dict[str, Metadata[Any]] = {"timestamp": timestamp, "snapshot": snapshot}
    listed = {name[: -len(".json")]: meta.version for name, meta in snapshot.signed.meta.items()}
    if "targets" not in listed:
        raise AdoptError(f"{snap_path.name} does not list targets.json")
    queue: list[tuple[str, Any]] = [("targets", root)]
    while queue:
        role, delegator = queue.pop(0)
        if role in loaded or role not in listed:
            continue
        path = meta_dir / f"{listed[role]}.{role}.json"
        md = _load(path, Targets)
        _verify(delegator, role, md, path)
        if md.signed.version != listed[role]:
            raise AdoptError(f"{path.name} holds {role} version {md.signed.version}")
        loaded[role] = md
        delegations = md.signed.delegations
        if delegations is not None:
            names = (
                list(delegations.succinct_roles.get_roles())
                if delegations.succinct_roles is not None
                else list(delegations.roles or {})
            )
            queue.extend((name, md.signed) for name in names)
    report.versions = {"root": root.version} | {r: md.signed.version for r, md in loaded.items()}
    return loaded


def _keys_listed(md: Metadata[Any]) -> set[str]:
    signed = md.signed
    if isinstance(signed, Root):
        return set(signed.keys)
    if isinstance(signed, Targets) and signed.delegations is not None:
        return set(signed.delegations.keys)
    return set()


def _plan_targets(
    loaded: dict[str, Metadata[Any]], target_dir: Path, store: RepoStore, report: AdoptReport
) -> list[tuple[Path, Path]]:
    """(source file, destination) for every target file found, each checked first.

    A client asks for ``DIR/HASH.NAME`` with the first hash the metadata lists, so that
    is where each file goes. Files are found under that name, any other hash's name, or
    the plain path; a file that does not match its metadata refuses the adoption.
    """
    copies: list[tuple[Path, Path]] = []
    for md in loaded.values():
        if not isinstance(md.signed, Targets):
            continue
        for path, info in md.signed.targets.items():
            report.targets += 1
            directory, sep, name = path.rpartition("/")
            served = f"{directory}{sep}{next(iter(info.hashes.values()))}.{name}"
            candidates = [f"{directory}{sep}{h}.{name}" for h in info.hashes.values()] + [path]
            found = next((target_dir / c for c in candidates if (target_dir / c).is_file()), None)
            if found is None:
                report.files_missing.append(path)
                continue
            _check_target(found, info)
            dest = store.targets_dir / served
            if dest.resolve() != found.resolve():
                copies.append((found, dest))
    return copies


def _check_target(path: Path, info: TargetFile) -> None:
    try:
        with path.open("rb") as handle:
            info.verify_length_and_hashes(handle)
    except Exception as exc:
        raise AdoptError(f"target {info.path}: {path} does not match its metadata: {exc}") from None
