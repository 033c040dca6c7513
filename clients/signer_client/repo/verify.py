"""Check a published repository the way a real client will: with python-tuf's ngclient.

The Updater starts from a root the caller trusts (by default ``1.root.json``), walks
every root rotation, timestamp, snapshot and targets metadata, and downloads targets,
checking lengths and hashes. Local directories are read through a small fetcher; a URL
is fetched over HTTP(S) by ngclient's own fetcher.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from tuf.api.exceptions import DownloadError, DownloadHTTPError
from tuf.api.exceptions import RepositoryError as TufRepositoryError
from tuf.ngclient import FetcherInterface, Updater

from signer_client.repo.errors import RepositoryError

_LOCAL = "http://tuf-repo.invalid/"


class DirectoryFetcher(FetcherInterface):
    """Serves ``_LOCAL`` URLs from a directory, as a web server over it would.

    The URL is read as HTTP reads it: query and fragment dropped, the path
    percent-decoded. So a target whose name does not survive a URL fails here exactly as
    it would for a client fetching over HTTP, instead of being read straight from disk.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory).resolve()

    def _fetch(self, url: str) -> Iterator[bytes]:
        if not url.startswith(_LOCAL):
            raise DownloadHTTPError(f"{url} is outside the repository", 404)
        relative = unquote(urlsplit(url).path)[len(urlsplit(_LOCAL).path) :]
        path = (self.directory / relative).resolve()
        if not path.is_relative_to(self.directory) or not path.is_file():
            raise DownloadHTTPError(f"{url} not found", 404)
        yield path.read_bytes()


class TargetCheckError(RepositoryError):
    """A listed target a client cannot download, or whose bytes do not match; names it.

    ``cause`` is ngclient's own exception (LengthOrHashMismatchError, DownloadHTTPError...).
    """

    def __init__(self, path: str, cause: Exception) -> None:
        self.path = path
        self.cause = cause
        super().__init__(f"target {path!r}: {type(cause).__name__}: {cause}")


@dataclass
class VerifyReport:
    versions: dict[str, int] = field(default_factory=dict)
    targets: list[str] = field(default_factory=list)


def verify(
    trusted_root: bytes,
    targets: Sequence[str] = (),
    directory: Path | None = None,
    url: str | None = None,
) -> VerifyReport:
    """Refresh top-level metadata with ngclient, then download and check ``targets``.

    Raises tuf's own exceptions (RepositoryError, ...) on metadata a client would reject,
    TargetCheckError (naming the target; ngclient's exception as ``cause``) for a target
    that cannot be downloaded or does not match, RepositoryError for unknown targets.
    """
    if (directory is None) == (url is None):
        raise ValueError("give a directory or a URL")
    base = _LOCAL if directory is not None else url.rstrip("/") + "/"  # type: ignore[union-attr]
    fetcher = DirectoryFetcher(directory) if directory is not None else None
    with tempfile.TemporaryDirectory(prefix="tuf-repo-verify-") as tmp:
        Path(tmp, "metadata").mkdir()
        Path(tmp, "targets").mkdir()
        updater = Updater(
            metadata_dir=str(Path(tmp, "metadata")),
            metadata_base_url=base + "metadata/",
            target_dir=str(Path(tmp, "targets")),
            target_base_url=base + "targets/",
            fetcher=fetcher,
            bootstrap=trusted_root,
        )
        try:
            updater.refresh()
        except DownloadError as exc:  # ngclient's own text may be empty (no connection)
            raise RepositoryError(
                f"cannot fetch metadata from {base}metadata/: {type(exc).__name__}: "
                f"{str(exc) or str(exc.__cause__ or '') or 'no answer in time'}"
            ) from exc
        report = VerifyReport()
        for path in targets:
            info = updater.get_targetinfo(path)
            if info is None:
                raise RepositoryError(f"target {path!r} is not in the repository")
            try:
                updater.download_target(info)
            except (TufRepositoryError, DownloadError) as exc:
                raise TargetCheckError(path, exc) from exc
            report.targets.append(path)
        trusted = updater._trusted_set  # the versions the client now trusts, for the report
        report.versions = {
            "root": trusted.root.version,
            "timestamp": trusted.timestamp.version,
            "snapshot": trusted.snapshot.version,
            "targets": trusted.targets.version,
        }
        return report
