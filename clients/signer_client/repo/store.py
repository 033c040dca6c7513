"""The repository directory: all file IO of ``tuf-repo`` lives here.

Layout (the ``metadata`` and ``targets`` folders are what a web server publishes)::

    REPO/tuf-repo.json        settings: expiry periods, key URIs, signer address
    REPO/metadata/            N.root.json (all kept), N.ROLE.json, timestamp.json
    REPO/targets/             DIR/SHA256.NAME (consistent snapshot target names)
    REPO/staging/ROLE.json    edited, possibly partly signed, not yet published

Consistent snapshots throughout: a published file is never rewritten (except
``timestamp.json``), so clients mid-update always see a coherent set.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuf.api.metadata import Metadata
from tuf.api.serialization import DeserializationError
from tuf.api.serialization.json import JSONSerializer

from signer_client.repo.errors import RepositoryError

CONFIG_NAME = "tuf-repo.json"
_ROLE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_VERSIONED = re.compile(r"^(\d+)\.root\.json$")


def check_role_name(name: str) -> str:
    """Role names become file names: keep them to a safe alphabet."""
    if not _ROLE_NAME.fullmatch(name) or name.endswith(".json"):
        raise RepositoryError(f"bad role name {name!r}: use letters, digits, '.', '_', '-'")
    return name


@dataclass
class RepoConfig:
    """Settings kept beside the metadata (``tuf-repo.json``)."""

    expiry_seconds: dict[str, int] = field(default_factory=dict)
    key_uris: dict[str, str] = field(default_factory=dict)  # key_id -> private key URI
    server: str = ""  # signerd HOST:PORT used for new keys
    # snapshot/timestamp meta: lengths and hashes of the files listed (TUF: optional)
    meta_length: bool = False
    meta_hashes: list[str] = field(default_factory=list)
    target_hashes: list[str] = field(default_factory=lambda: ["sha256"])
    # role -> highest version ever staged and then discarded (``abort``): never reused,
    # as a daemon key may have signed it (it refuses other bytes at a version it signed)
    version_floor: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "expiry_seconds": self.expiry_seconds,
            "key_uris": self.key_uris,
            "server": self.server,
            "meta_length": self.meta_length,
            "meta_hashes": self.meta_hashes,
            "target_hashes": self.target_hashes,
            "version_floor": self.version_floor,
        }

    @classmethod
    def from_dict(cls, data: Any) -> RepoConfig:
        """Each field type-checked: a ValueError names the field and what it must be."""
        if not isinstance(data, dict):
            raise ValueError(f"must be a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            known = ", ".join(sorted(cls.__dataclass_fields__))
            raise ValueError(f"unknown field(s) {', '.join(unknown)}; known: {known}")
        d = cls()
        return cls(
            expiry_seconds=_mapping(data, "expiry_seconds", int, "seconds"),
            key_uris=_mapping(data, "key_uris", str, "URI strings"),
            server=_typed(data, "server", str, d.server, "a string"),
            meta_length=_typed(data, "meta_length", bool, d.meta_length, "true or false"),
            meta_hashes=_strings(data, "meta_hashes", d.meta_hashes),
            target_hashes=_strings(data, "target_hashes", d.target_hashes),
            version_floor=_mapping(data, "version_floor", int, "versions"),
        )


def _typed(data: dict[str, Any], name: str, kind: type, default: Any, expected: str) -> Any:
    value = data.get(name, default)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return value


def _strings(data: dict[str, Any], name: str, default: list[str]) -> list[str]:
    value = data.get(name, default)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{name} must be a list of strings, got {value!r}")
    return list(value)


def _mapping(data: dict[str, Any], name: str, kind: type, what: str) -> dict[str, Any]:
    value = data.get(name, {})
    ok = isinstance(value, dict) and all(
        isinstance(v, kind) and not isinstance(v, bool) for v in value.values()
    )
    if not ok:
        raise ValueError(f"{name} must map names to {what}, got {value!r}")
    return dict(value)


class RepoStore:
    """Reads and writes the files of one repository directory."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.metadata_dir = self.path / "metadata"
        self.targets_dir = self.path / "targets"
        self.staging_dir = self.path / "staging"
        self._serializer = JSONSerializer(compact=False)

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive use of the repository (a cron ``refresh`` waits for a ``publish``)."""
        self.path.mkdir(parents=True, exist_ok=True)
        with (self.path / ".tuf-repo.lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # -- settings ----------------------------------------------------------------------

    def exists(self) -> bool:
        return (self.path / CONFIG_NAME).exists()

    def load_config(self) -> RepoConfig:
        path = self.path / CONFIG_NAME
        if not path.exists():
            raise RepositoryError(f"{self.path} is not a tuf-repo repository (run `init`)")
        try:
            return RepoConfig.from_dict(json.loads(path.read_text()))
        except (ValueError, OSError) as exc:
            raise RepositoryError(f"{path}: not a valid tuf-repo settings file: {exc}") from None

    def save_config(self, config: RepoConfig) -> None:
        for d in (self.metadata_dir, self.targets_dir, self.staging_dir):
            d.mkdir(parents=True, exist_ok=True)
        _atomic_write(
            self.path / CONFIG_NAME, json.dumps(config.to_dict(), indent=2).encode() + b"\n"
        )

    # -- published metadata ------------------------------------------------------------

    def root_versions(self) -> list[int]:
        if not self.metadata_dir.exists():
            return []
        found = (_VERSIONED.match(p.name) for p in self.metadata_dir.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def published_path(self, role: str, version: int) -> Path:
        if role == "timestamp":
            return self.metadata_dir / "timestamp.json"
        return self.metadata_dir / f"{version}.{role}.json"

    def read_published(self, role: str, version: int) -> Metadata[Any] | None:
        path = self.published_path(role, version)
        return read_metadata(path) if path.exists() else None

    def write_published(self, role: str, md: Metadata[Any]) -> Path:
        path = self.published_path(role, md.signed.version)
        if role != "timestamp" and path.exists():
            raise RepositoryError(f"{path.name} is already published; versions are never reused")
        _atomic_write(path, self.serialize(md))
        return path

    def serialize(self, md: Metadata[Any]) -> bytes:
        """The exact bytes published for ``md`` (what snapshot/timestamp hashes cover)."""
        return md.to_bytes(self._serializer)

    # -- staging -----------------------------------------------------------------------

    def staged_roles(self) -> list[str]:
        if not self.staging_dir.exists():
            return []
        return sorted(p.name[: -len(".json")] for p in self.staging_dir.glob("*.json"))

    def read_staged(self, role: str) -> Metadata[Any] | None:
        path = self.staging_dir / f"{role}.json"
        return read_metadata(path) if path.exists() else None

    def write_staged(self, role: str, md: Metadata[Any]) -> None:
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.staging_dir / f"{check_role_name(role)}.json", md.to_bytes())

    def clear_staged(self, role: str) -> None:
        (self.staging_dir / f"{role}.json").unlink(missing_ok=True)

    # -- target files ------------------------------------------------------------------

    def target_file_path(self, target_path: str, sha256: str) -> Path:
        """Where a target is served: ``targets/DIR/HASH.NAME`` (consistent snapshot)."""
        directory, _, name = target_path.rpartition("/")
        return self.targets_dir / directory / f"{sha256}.{name}"

    def put_target(self, local: Path, target_path: str, sha256: str) -> None:
        dest = self.target_file_path(target_path, sha256)
        if dest.exists():
            return
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.copyfile(local, tmp)
        os.replace(tmp, dest)

    def link_target(self, target_path: str, digest: str, other: str) -> None:
        """Serve the file stored under ``digest`` under ``other`` too (one name per hash)."""
        source = self.target_file_path(target_path, digest)
        dest = self.target_file_path(target_path, other)
        if dest.exists():
            return
        tmp = dest.with_name(dest.name + ".tmp")
        tmp.unlink(missing_ok=True)
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, dest)

    # -- housekeeping ------------------------------------------------------------------

    def versioned_files(self) -> list[tuple[str, int, Path]]:
        """(role, version, path) of every N.ROLE.json in metadata/."""
        out = []
        if self.metadata_dir.exists():
            for path in self.metadata_dir.iterdir():
                number, _, rest = path.name.partition(".")
                if number.isdigit() and rest.endswith(".json") and len(rest) > 5:
                    out.append((rest[: -len(".json")], int(number), path))
        return sorted(out)

    def target_files(self) -> list[Path]:
        if not self.targets_dir.exists():
            return []
        return sorted(p for p in self.targets_dir.rglob("*") if p.is_file())

    def remove_empty_dirs(self) -> None:
        for d in sorted(self.targets_dir.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()

    def remove_all(self) -> None:
        """Undo a failed ``init``: the settings and the three folders, nothing else."""
        (self.path / CONFIG_NAME).unlink(missing_ok=True)
        for d in (self.metadata_dir, self.targets_dir, self.staging_dir):
            shutil.rmtree(d, ignore_errors=True)


def read_metadata(path: Path) -> Metadata[Any]:
    """Metadata from a file; a file that does not parse is named in the error."""
    try:
        return Metadata.from_bytes(path.read_bytes())
    except DeserializationError as exc:
        raise RepositoryError(f"{path}: not valid TUF metadata: {exc}") from None


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
