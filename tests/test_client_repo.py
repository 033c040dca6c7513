"""``tuf-repo`` end to end: a real daemon signs, python-tuf's ngclient judges.

After each step the published directory is served over HTTP on 127.0.0.1 and a fresh
ngclient Updater (trusting only 1.root.json) refreshes and downloads a target. The
negative cases tamper with a served copy, never with the repository itself.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from tuf.api.exceptions import (
    BadVersionNumberError,
    LengthOrHashMismatchError,
    UnsignedMetadataError,
)
from tuf.api.metadata import Metadata
from tuf.ngclient import Updater

from harness import Daemon
from signer_client.repo import Repository, RepositoryError, RepoStore
from signer_client.repo_cli import main

# -- fixtures and helpers ----------------------------------------------------------------


@pytest.fixture(scope="module")
def client_env(daemon: Daemon, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """SIGNER_CLIENT_CONFIG pointing at the module's daemon, as an operator would set it."""
    cfg = daemon.client_config("admin")
    path = tmp_path_factory.mktemp("client") / "client.toml"
    path.write_text(
        f'address = "{cfg.address}"\nca = "{cfg.ca}"\ncert = "{cfg.cert}"\nkey = "{cfg.key}"\n'
    )
    old = os.environ.get("SIGNER_CLIENT_CONFIG")
    os.environ["SIGNER_CLIENT_CONFIG"] = str(path)
    yield path
    if old is None:
        os.environ.pop("SIGNER_CLIENT_CONFIG", None)
    else:
        os.environ["SIGNER_CLIENT_CONFIG"] = old


class Served:
    """An HTTP server on 127.0.0.1 over one directory (metadata/ and targets/)."""

    def __init__(self, directory: Path) -> None:
        handler = partial(_QuietHandler, directory=str(directory))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def serve() -> Iterator[Any]:
    servers: list[Served] = []

    def start(directory: Path) -> Served:
        servers.append(Served(directory))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def updater(served: Served, client_dir: Path, root: bytes | None) -> Updater:
    (client_dir / "metadata").mkdir(parents=True, exist_ok=True)
    (client_dir / "targets").mkdir(parents=True, exist_ok=True)
    return Updater(
        metadata_dir=str(client_dir / "metadata"),
        metadata_base_url=f"{served.url}/metadata/",
        target_dir=str(client_dir / "targets"),
        target_base_url=f"{served.url}/targets/",
        bootstrap=root,
    )


def fetch(served: Served, repo: Path, tmp: Path, target: str) -> bytes | None:
    """A brand-new client trusting 1.root.json: refresh, download, return the bytes."""
    client_dir = tmp / f"client-{os.urandom(4).hex()}"
    up = updater(served, client_dir, (repo / "metadata" / "1.root.json").read_bytes())
    up.refresh()
    info = up.get_targetinfo(target)
    if info is None:
        return None
    return Path(up.download_target(info)).read_bytes()


def run(*argv: str, repo: Path) -> int:
    return main(["-C", str(repo), *argv])


def fetches_first(repo: Path, tmp_path: Path, files: dict[str, bytes]) -> None:
    """A fresh ngclient, over HTTP, downloads the first of ``files`` with its bytes."""
    served = Served(repo)
    try:
        name, data = next(iter(files.items()))
        assert fetch(served, repo, tmp_path, name) == data
    finally:
        served.close()


def repo_files(repo: Path) -> dict[str, bytes]:
    """Every file of a repository directory (not its lock), by relative path."""
    if not repo.exists():
        return {}
    return {
        str(p.relative_to(repo)): p.read_bytes()
        for p in repo.rglob("*")
        if p.is_file() and p.suffix != ".lock"
    }


def refused(capsys: pytest.CaptureFixture[str], repo: Path, *argv: str) -> str:
    """A refusal: exit 1, one stderr line, no traceback, no file of the repository
    changed (and no directory left behind); returns the line."""
    before, existed = repo_files(repo), repo.exists()
    capsys.readouterr()
    assert run(*argv, repo=repo) == 1, argv
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tuf-repo: error: "), err
    assert "Traceback" not in err
    assert repo_files(repo) == before, argv
    assert repo.exists() == existed, "a refused command leaves no directory behind"
    return err


def make_files(directory: Path, count: int, stem: str = "file") -> dict[str, bytes]:
    directory.mkdir(parents=True, exist_ok=True)
    contents = {}
    for i in range(count):
        name = f"{stem}{i}.txt" if i % 2 else f"sub/{stem}{i}.txt"
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        data = f"{stem} {i}\n".encode() * (i + 1)
        (directory / name).write_bytes(data)
        contents[name] = data
    return contents


def published(repo: Path, role: str) -> Metadata[Any]:
    return Repository(RepoStore(repo)).published(role)  # type: ignore[return-value]


def new_repo(tmp: Path, *extra: str) -> Path:
    repo = tmp / "repo"
    assert run("init", "--create-keys", "--algorithm", "ed25519", *extra, repo=repo) == 0
    return repo


# -- tests -------------------------------------------------------------------------------


def test_init_add_remove_and_tampered_target(
    client_env: Path, tmp_path: Path, serve: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = new_repo(tmp_path, "--expires", "timestamp=2h", "--threshold", "root=2")
    out = capsys.readouterr().out
    assert out.count("created root key") == 2
    assert "published" in out and "1 signing round trip" in out
    served = serve(repo)
    assert fetch(served, repo, tmp_path, "nothing") is None  # empty but valid repository
    assert len(published(repo, "root").signatures) == 2

    files = make_files(tmp_path / "in", 6)
    assert run("targets", "add", str(tmp_path / "in"), "--prefix", "app/", repo=repo) == 0
    assert "staged" in capsys.readouterr().out
    assert run("publish", repo=repo) == 0
    assert "targets v2" in capsys.readouterr().out
    for name, data in files.items():
        assert fetch(served, repo, tmp_path, f"app/{name}") == data
    # consistent snapshot names: DIR/SHA256.NAME and N.targets.json
    digest = hashlib.sha256(files["sub/file0.txt"]).hexdigest()
    assert (repo / "targets" / "app" / "sub" / f"{digest}.file0.txt").exists()
    assert (repo / "metadata" / "2.targets.json").exists()
    assert run("verify", "--all-targets", repo=repo) == 0
    assert "6 target(s) downloaded" in capsys.readouterr().out
    assert run("verify", "--url", served.url, "--target", "app/file3.txt", repo=repo) == 0
    assert "1 target(s) downloaded" in capsys.readouterr().out
    assert run("init", "--create-keys", repo=repo) == 1  # never over an existing one
    assert "already a repository" in capsys.readouterr().err

    assert run("targets", "remove", "app/file1.txt", repo=repo) == 0
    assert run("publish", repo=repo) == 0
    assert fetch(served, repo, tmp_path, "app/file1.txt") is None
    assert fetch(served, repo, tmp_path, "app/file3.txt") == files["file3.txt"]
    assert run("publish", repo=repo) == 0
    assert "nothing to publish" in capsys.readouterr().out

    # tampered target: same name, other bytes -> ngclient refuses it
    copy = tmp_path / "tampered"
    shutil.copytree(repo, copy)
    digest = hashlib.sha256(files["file3.txt"]).hexdigest()
    (copy / "targets" / "app" / f"{digest}.file3.txt").write_bytes(b"evil\n")
    with pytest.raises(LengthOrHashMismatchError):
        fetch(serve(copy), repo, tmp_path, "app/file3.txt")
    assert run("verify", "--target", "app/file3.txt", repo=copy) == 1
    capsys.readouterr()


def test_threshold_delegation_partial_signing_and_under_signed(
    client_env: Path, tmp_path: Path, serve: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = new_repo(tmp_path)
    capsys.readouterr()
    args = ["delegate", "pkgs", "--paths", "pkgs/*", "--threshold", "2", "--create-key"]
    assert run(*args, repo=repo) == 0
    keys = [line.split()[-1] for line in capsys.readouterr().out.splitlines() if "created" in line]
    assert len(keys) == 2
    assert run("publish", repo=repo) == 0  # the new role is empty; both keys sign it
    files = make_files(tmp_path / "in", 3, "pkg")
    pkg1 = str(tmp_path / "in" / "pkg1.txt")
    assert run("targets", "add", pkg1, "--role", "pkgs", "--prefix", "pkgs/", repo=repo) == 0
    capsys.readouterr()

    # first key holder signs; the role is visibly half signed and cannot be published
    assert run("sign", "pkgs", "--key", keys[0], repo=repo) == 0
    assert run("status", repo=repo) == 0
    status = capsys.readouterr().out
    line = next(x for x in status.splitlines() if x.startswith("pkgs"))
    assert "1/2 MISSING 1" in line and keys[1][:8] in line
    assert run("publish", "--no-sign", repo=repo) == 1
    assert "pkgs: 1/2 signatures" in capsys.readouterr().err

    # second key holder signs; now it publishes
    assert run("sign", "pkgs", "--key", keys[1], repo=repo) == 0
    assert run("publish", "--no-sign", repo=repo) == 0
    served = serve(repo)
    assert fetch(served, repo, tmp_path, "pkgs/pkg1.txt") == files["pkg1.txt"]
    md = published(repo, "pkgs")
    assert set(md.signatures) == set(keys)

    # an under-signed copy of the role is rejected by the client
    copy = tmp_path / "undersigned"
    shutil.copytree(repo, copy)
    path = copy / "metadata" / f"{md.signed.version}.pkgs.json"
    data = json.loads(path.read_text())
    data["signatures"] = data["signatures"][:1]
    path.write_text(json.dumps(data))
    with pytest.raises(UnsignedMetadataError):
        fetch(serve(copy), repo, tmp_path, "pkgs/pkg1.txt")

    # a delegated role cannot be published without its staged delegator
    assert run("delegate", "more", "--paths", "more/*", "--create-key", repo=repo) == 0
    assert run("publish", "--role", "more", repo=repo) == 1
    assert "depends on staged targets" in capsys.readouterr().err
    assert run("publish", repo=repo) == 0

    # path_hash_prefixes delegation beside it
    name = "other/x.bin"
    prefix = hashlib.sha256(name.encode()).hexdigest()[:2]
    args = ["delegate", "hashed", "--path-hash-prefixes", prefix, "--create-key", "--terminating"]
    assert run(*args, repo=repo) == 0
    (tmp_path / "x.bin").write_bytes(b"x" * 100)
    x_bin = str(tmp_path / "x.bin")
    assert run("targets", "add", x_bin, "--role", "hashed", "--prefix", "other/", repo=repo) == 0
    assert run("publish", repo=repo) == 0
    assert fetch(served, repo, tmp_path, name) == b"x" * 100


def test_hash_bins(
    client_env: Path, tmp_path: Path, serve: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = new_repo(tmp_path)
    assert run("delegate", "bins", "--hash-bins", "32", "--create-key", repo=repo) == 0
    files = make_files(tmp_path / "in", 150)
    capsys.readouterr()
    assert run("targets", "add", str(tmp_path / "in"), repo=repo) == 0
    captured = capsys.readouterr()
    assert "150/150" in captured.err  # progress bar for a large set
    assert run("publish", repo=repo) == 0
    out = capsys.readouterr().out
    # 32 bins + targets + snapshot + timestamp, all in one SignBatch
    assert "35 signatures, 1 signing round trip" in out
    served = serve(repo)
    for name in ("sub/file0.txt", "file77.txt", "sub/file148.txt"):
        assert fetch(served, repo, tmp_path, name) == files[name]
    snapshot = published(repo, "snapshot")
    bin_versions = [m.version for n, m in snapshot.signed.meta.items() if n.startswith("bins-")]
    # one shared bin key: the daemon keeps one version per key and role, so bins draw
    # their versions from one counter and never collide
    assert len(bin_versions) == 32 and len(set(bin_versions)) == 32
    assert run("status", repo=repo) == 0
    assert "32 hash bins, published and signed" in capsys.readouterr().out
    right = Repository(RepoStore(repo)).role_for_target("x.txt")
    wrong = "bins-00" if right != "bins-00" else "bins-01"
    (tmp_path / "x.txt").write_text("x")
    assert run("targets", "add", str(tmp_path / "x.txt"), "--role", wrong, repo=repo) == 1
    assert f"belongs in hash bin {right}" in capsys.readouterr().err

    # the bin key, created with role "bins", rotates for all bins at once
    old = published(repo, "targets").signed.delegations.succinct_roles.keyids[0]
    assert run("rotate", "bins", "--create-key", "--remove-key", old, repo=repo) == 0
    assert run("publish", repo=repo) == 0
    assert "35 signatures" in capsys.readouterr().out
    assert fetch(served, repo, tmp_path, "file77.txt") == files["file77.txt"]

    # before they expire: new versions and expiries for every bin, one SignBatch
    assert run("bump", "bins", repo=repo) == 0
    assert run("publish", repo=repo) == 0
    assert "34 signatures, 1 signing round trip" in capsys.readouterr().out
    assert fetch(served, repo, tmp_path, "sub/file148.txt") == files["sub/file148.txt"]


def test_repository_lock_serialises_commands(tmp_path: Path) -> None:
    store = RepoStore(tmp_path / "repo")
    entered = threading.Event()

    def second() -> None:
        with store.lock():
            entered.set()

    with store.lock():
        thread = threading.Thread(target=second)
        thread.start()
        assert not entered.wait(0.3)  # waits while the first holder works
    assert entered.wait(5)
    thread.join()


def test_rotations_refresh_and_rollback(
    client_env: Path, tmp_path: Path, serve: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = new_repo(tmp_path)
    (tmp_path / "a.txt").write_text("a\n")
    assert run("targets", "add", str(tmp_path / "a.txt"), repo=repo) == 0
    assert run("publish", repo=repo) == 0
    served = serve(repo)
    # a long-lived client that has seen the current timestamp
    client_dir = tmp_path / "steady-client"
    root1 = (repo / "metadata" / "1.root.json").read_bytes()
    up = updater(served, client_dir, root1)
    up.refresh()

    # root rotation: v2 signed by the old and the new root key; every N.root.json kept
    old_root = published(repo, "root").signed.roles["root"].keyids[0]
    capsys.readouterr()
    assert run("rotate", "root", "--create-key", "--remove-key", old_root, repo=repo) == 0
    new_root = capsys.readouterr().out.split("created root key ")[1].split()[0]
    assert run("status", repo=repo) == 0
    status = capsys.readouterr().out
    assert "root v2 keys 0/1 MISSING" in status and "root v1 keys 0/1 MISSING" in status
    assert run("publish", repo=repo) == 0
    root2 = published(repo, "root")
    assert root2.signed.version == 2 and set(root2.signatures) == {old_root, new_root}
    assert (repo / "metadata" / "1.root.json").exists()
    assert fetch(served, repo, tmp_path, "a.txt") == b"a\n"

    # root 3 with keys rotated again; a copy whose root 3 carries only the new key's
    # signature must be rejected by a client that trusts root 2
    assert run("rotate", "root", "--create-key", "--remove-key", new_root, repo=repo) == 0
    assert run("publish", repo=repo) == 0
    newest = published(repo, "root").signed.roles["root"].keyids[0]
    copy = tmp_path / "new-keys-only"
    shutil.copytree(repo, copy)
    path = copy / "metadata" / "3.root.json"
    data = json.loads(path.read_text())
    data["signatures"] = [s for s in data["signatures"] if s["keyid"] == newest]
    assert len(data["signatures"]) == 1
    path.write_text(json.dumps(data))
    with pytest.raises(UnsignedMetadataError):
        fetch(serve(copy), repo, tmp_path, "a.txt")
    assert fetch(served, repo, tmp_path, "a.txt") == b"a\n"  # the real one is fine

    # rotate the keys of targets, snapshot and timestamp (root 4, 5, 6)
    for role in ("targets", "snapshot", "timestamp"):
        old = published(repo, "root").signed.roles[role].keyids[0]
        assert run("rotate", role, "--create-key", "--remove-key", old, repo=repo) == 0
        assert run("publish", repo=repo) == 0
        assert fetch(served, repo, tmp_path, "a.txt") == b"a\n"
        assert old not in published(repo, role).signatures
    assert sorted(RepoStore(repo).root_versions()) == [1, 2, 3, 4, 5, 6]

    # refresh: nothing due right after publishing; --force re-signs snapshot and timestamp
    up = updater(served, client_dir, None)
    up.refresh()
    before = published(repo, "timestamp").signed.version
    old_timestamp = (repo / "metadata" / "timestamp.json").read_bytes()
    capsys.readouterr()
    assert run("refresh", repo=repo) == 0
    assert "nothing due" in capsys.readouterr().out
    assert run("refresh", "--force", repo=repo) == 0
    assert published(repo, "timestamp").signed.version == before + 1
    up = updater(served, client_dir, None)
    up.refresh()  # the steady client now trusts the newer timestamp

    # rollback: serve the older timestamp again; the client that saw the newer one refuses
    copy = tmp_path / "rollback"
    shutil.copytree(repo, copy)
    (copy / "metadata" / "timestamp.json").write_bytes(old_timestamp)
    with pytest.raises(BadVersionNumberError):
        updater(serve(copy), client_dir, None).refresh()


def test_refresh_is_due_only_near_expiry(client_env: Path, tmp_path: Path) -> None:
    repo = new_repo(tmp_path, "--expires", "timestamp=1d", "--expires", "snapshot=7d")
    store = RepoStore(repo)
    timestamp = published(repo, "timestamp").signed.version
    start = published(repo, "timestamp").signed.expires
    from datetime import timedelta

    later = Repository(store, now=lambda: start - timedelta(hours=13))
    assert later.refresh() is None  # 13h of 24h left: not due
    later = Repository(store, now=lambda: start - timedelta(hours=11))
    result = later.refresh()
    assert result is not None and set(result.published) == {"timestamp"}
    assert published(repo, "timestamp").signed.version == timestamp + 1


def test_versions_never_reused(client_env: Path, tmp_path: Path) -> None:
    """Edits after signing bump the version; unsigned edits and no-ops do not."""
    repo_dir = new_repo(tmp_path)
    (tmp_path / "a").write_text("a")
    (tmp_path / "b").write_text("b")
    repo = Repository(RepoStore(repo_dir))
    repo.add_targets([("a", tmp_path / "a")])
    assert repo.current("targets").signed.version == 2  # type: ignore[union-attr]
    repo.add_targets([("b", tmp_path / "b")])
    assert repo.current("targets").signed.version == 2  # type: ignore[union-attr]
    repo.add_targets([("b", tmp_path / "b")])  # no change
    assert repo.sign(["targets"]) == {}
    assert repo.current("targets").signatures  # type: ignore[union-attr]
    repo.add_targets([("b", tmp_path / "b")])  # still no change: signature kept
    assert repo.current("targets").signatures  # type: ignore[union-attr]
    repo.remove_targets(["a"])  # signed content changes: new version, no signatures
    md = repo.current("targets")
    assert md is not None and md.signed.version == 3 and not md.signatures
    # a partly signed staged root cannot be edited (root versions are consecutive)
    repo.rotate("root", threshold=1)  # no change
    assert "root" not in repo.staged_roles()
    repo.touch("root")
    repo.sign(["root"])
    with pytest.raises(RepositoryError, match="consecutive"), repo.edit("root") as root:
        root.unrecognized_fields["x-note"] = "changed"
    result = repo.publish()
    assert result.published["targets"] == 3 and result.published["root"] == 2


def test_offline_root_key_with_online_daemon_keys(
    client_env: Path, daemon: Daemon, tmp_path: Path, serve: Any
) -> None:
    """Key URIs of any scheme work: a root key in a local file, the rest in the daemon."""
    from cryptography.hazmat.primitives import serialization
    from securesystemslib.signer import CryptoSigner

    from signer_client.repo import DaemonKeys, RoleSpec
    from signer_client.repo.signing import KeyRef

    offline = CryptoSigner.generate_ecdsa()
    pem = tmp_path / "root-key.pem"
    pem.write_bytes(
        offline._private_key.private_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    keys = DaemonKeys(daemon.client())
    roles = {"root": RoleSpec([KeyRef(offline.public_key, f"file2:{pem}")])}
    roles |= {
        r: RoleSpec([keys.create(r, "ed25519")]) for r in ("targets", "snapshot", "timestamp")
    }
    repo_dir = tmp_path / "repo"
    result = Repository(RepoStore(repo_dir)).init(roles)
    assert result.stats.signatures == 4 and result.stats.round_trips == 2  # file + 1 batch
    (tmp_path / "t.txt").write_text("t")
    repo = Repository(RepoStore(repo_dir))
    repo.add_targets([("t.txt", tmp_path / "t.txt")])
    repo.publish()
    assert fetch(serve(repo_dir), repo_dir, tmp_path, "t.txt") == b"t"


def test_init_with_existing_daemon_keys(
    client_env: Path, daemon: Daemon, tmp_path: Path, serve: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    with daemon.client() as client:
        ids = {r: client.create_key(f"existing-{r}", role=r).key_id for r in TOP}
        second_root = client.create_key("existing-root-2", "ed25519", role="root").key_id
    repo = tmp_path / "repo"
    # a key bound to another role is refused before anything is written
    wrong = [f"--key={r}={ids['root' if r == 'targets' else r]}" for r in TOP]
    assert run("init", *wrong, repo=repo) == 1
    assert "signs only 'root' metadata; targets needs 'targets'" in capsys.readouterr().err
    assert not (repo / "tuf-repo.json").exists()

    keys = [f"--key={r}={ids[r]}" for r in TOP] + [f"--key=root={second_root}"]
    assert run("init", *keys, "--threshold", "root=2", repo=repo) == 0
    root = published(repo, "root").signed
    assert set(root.roles["root"].keyids) == {ids["root"], second_root}
    assert root.roles["root"].threshold == 2
    assert fetch(serve(repo), repo, tmp_path, "none") is None


TOP = ("root", "targets", "snapshot", "timestamp")
