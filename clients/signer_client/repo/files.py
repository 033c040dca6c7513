"""Target files on the local disk: what to add, and which target paths are acceptable."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from signer_client.repo.errors import RepositoryError


def collect_files(paths: Sequence[Path], prefix: str = "") -> list[tuple[str, Path]]:
    """(target path, local file) for files and, recursively, directories."""
    out: list[tuple[str, Path]] = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            for local in sorted(p for p in path.rglob("*") if p.is_file()):
                out.append((prefix + local.relative_to(path).as_posix(), local))
        elif path.is_file():
            out.append((prefix + path.name, path))
        else:
            raise RepositoryError(f"{path}: no such file or directory")
    return out


def check_target_path(path: str) -> None:
    parts = PurePosixPath(path).parts
    if not path or path.startswith("/") or ".." in parts or "" in path.split("/"):
        raise RepositoryError(f"bad target path {path!r}")
