"""Target files on the local disk: what to add, and which target paths are acceptable."""

from __future__ import annotations

import re
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


# ngclient puts the target path into the URL as it is (``BASE/DIR/HASH.NAME``, not
# percent-encoded): "#" starts a fragment, "?" a query, "%XX" is decoded by the server,
# "\\" is a separator to some servers, and whitespace or control characters are mangled
# or refused by HTTP libraries. A target named so can be listed, but never downloaded:
# refused (renaming it would change the path clients ask for, which is its identity).
_HTTP_UNSAFE = re.compile(r"[#?%\\\x00-\x20\x7f-\x9f\u2028\u2029]")


def check_target_path(path: str) -> None:
    """Refuse target paths that clients cannot fetch over HTTP, or that escape targets/."""
    parts = PurePosixPath(path).parts
    if not path or path.startswith("/") or ".." in parts or "" in path.split("/"):
        raise RepositoryError(f"bad target path {path!r}")
    if "." in path.split("/"):
        raise RepositoryError(f"bad target path {path!r}: '.' segments are removed from URLs")
    bad = _HTTP_UNSAFE.search(path)
    if bad:
        raise RepositoryError(
            f"target path {path!r} cannot be fetched over HTTP: clients put it into the URL "
            f"unencoded, where {bad.group()!r} does not survive (rename the file)"
        )
