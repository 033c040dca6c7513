"""The verbs beyond init/add/publish: undelegate, abort, expiry set, prune, meta lengths
and hashes, sha512 and custom target metadata, status --json, progress, rate limits.

The daemon rate-limits every principal (burst 100): a publish of 256 hash bins needs
batches of at most 100 and waits between them, as the daemon says. After each verb a
fresh ngclient trusting only 1.root.json refreshes and downloads over HTTP.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from test_client_repo import Served, fetch, make_files, published, run, updater
from tuf.api.exceptions import LengthOrHashMismatchError

from harness import Daemon, running_daemon
from signer_client.repo import Repository, RepoStore

POLICY = """
[[rules]]
principals = ["admin"]
operations = ["create", "read", "sign", "retire", "destroy"]
keys = { roles = ["*"] }

[rate_limits]
"*" = { rate = 200.0, burst = 100 }
"""


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("signerd-limited")
    with running_daemon(root, clients=["admin"], policy=POLICY) as daemon:
        cfg = daemon.client_config("admin")
        path = root / "client.toml"
        path.write_text(
            f'address = "{cfg.address}"\nca = "{cfg.ca}"\ncert = "{cfg.cert}"\nkey = "{cfg.key}"\n'
        )
        old = os.environ.get("SIGNER_CLIENT_CONFIG")
        os.environ["SIGNER_CLIENT_CONFIG"] = str(path)
        try:
            yield daemon
        finally:
            if old is None:
                os.environ.pop("SIGNER_CLIENT_CONFIG", None)
            else:
                os.environ["SIGNER_CLIENT_CONFIG"] = old


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Any]:
    servers: list[Served] = []

    def start(repo: Path) -> Served:
        servers.append(Served(repo))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def new_repo(tmp_path: Path, *extra: str) -> Path:
    repo = tmp_path / "repo"
    assert run("init", "--create-keys", "--algorithm", "ed25519", *extra, repo=repo) == 0
    return repo


def write(path: Path, data: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data)
    return path


def test_undelegate_then_prune(
    limited: Daemon, tmp_path: Path, served: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = new_repo(tmp_path)
    assert run("delegate", "pkgs", "--paths", "pkgs/*", "--create-key", repo=repo) == 0
    assert run("delegate", "docs", "--paths", "docs/*", "--create-key", repo=repo) == 0
    add = ["targets", "add", "--prefix"]
    assert (
        run(*add, "pkgs/", str(write(tmp_path / "a.txt", "a\n")), "--role", "pkgs", repo=repo) == 0
    )
    assert (
        run(*add, "docs/", str(write(tmp_path / "d.txt", "d\n")), "--role", "docs", repo=repo) == 0
    )
    assert run("publish", repo=repo) == 0
    server = served(repo)
    assert fetch(server, repo, tmp_path, "pkgs/a.txt") == b"a\n"
    pkgs_keys = set(published(repo, "targets").signed.delegations.roles["pkgs"].keyids)

    capsys.readouterr()
    assert run("undelegate", "pkgs", repo=repo) == 0
    assert "no longer delegated: pkgs" in capsys.readouterr().out
    assert run("publish", repo=repo) == 0
    targets = published(repo, "targets").signed
    assert list(targets.delegations.roles) == ["docs"]
    assert not pkgs_keys & set(targets.delegations.keys)  # its keys went with it
    assert "pkgs.json" not in published(repo, "snapshot").signed.meta
    assert fetch(server, repo, tmp_path, "pkgs/a.txt") is None
    assert fetch(server, repo, tmp_path, "docs/d.txt") == b"d\n"
    assert run("undelegate", "targets", repo=repo) == 1
    assert "top-level role" in capsys.readouterr().err

    # prune: the newest snapshot and what it lists stay, every root stays
    for i in range(3):
        assert run(*add, "docs/", str(write(tmp_path / f"v{i}/d.txt", f"d{i}\n")), repo=repo) == 0
        assert run("publish", repo=repo) == 0
    old_pkgs = list((repo / "metadata").glob("*.pkgs.json"))
    assert old_pkgs
    capsys.readouterr()
    assert run("prune", "--keep", "2", "--dry-run", repo=repo) == 0
    assert "would remove" in capsys.readouterr().out and old_pkgs[0].exists()
    assert run("prune", "--keep", "1", repo=repo) == 0
    out = capsys.readouterr().out
    assert "removed" in out and "unlisted target file(s)" in out
    assert not list((repo / "metadata").glob("*.pkgs.json"))
    assert len(list((repo / "metadata").glob("*.snapshot.json"))) == 1
    assert (repo / "metadata" / "1.root.json").exists()
    digest = hashlib.sha256(b"a\n").hexdigest()
    assert not (repo / "targets" / "pkgs" / f"{digest}.a.txt").exists()
    assert fetch(server, repo, tmp_path, "docs/d.txt") == b"d2\n"
    assert run("verify", "--all-targets", repo=repo) == 0
    assert run("prune", "--keep", "0", repo=repo) == 1


def test_undelegate_hash_bins(limited: Daemon, tmp_path: Path, served: Any) -> None:
    repo = new_repo(tmp_path)
    assert run("delegate", "bins", "--hash-bins", "8", "--create-key", repo=repo) == 0
    files = make_files(tmp_path / "in", 10)
    assert run("targets", "add", str(tmp_path / "in"), repo=repo) == 0
    assert run("publish", repo=repo) == 0
    assert run("undelegate", "bins-3", repo=repo) == 1  # bins go together
    assert run("undelegate", "bins", repo=repo) == 0
    assert run("publish", repo=repo) == 0
    assert sorted(published(repo, "snapshot").signed.meta) == ["targets.json"]
    assert fetch(served(repo), repo, tmp_path, "file1.txt") is None
    assert run("targets", "add", str(tmp_path / "in"), repo=repo) == 0  # now in targets
    assert run("publish", repo=repo) == 0
    assert fetch(served(repo), repo, tmp_path, "file1.txt") == files["file1.txt"]


def test_abort_discards_staged_and_partly_signed(
    limited: Daemon, tmp_path: Path, served: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = new_repo(tmp_path, "--threshold", "targets=2")
    before = published(repo, "targets").signed.version
    keys = published(repo, "root").signed.roles["targets"].keyids
    assert run("targets", "add", str(write(tmp_path / "x.txt", "x\n")), repo=repo) == 0
    assert run("sign", "targets", "--key", keys[0], repo=repo) == 0  # partly signed v2
    capsys.readouterr()
    assert run("abort", repo=repo) == 0
    assert "discarded staged targets" in capsys.readouterr().out
    assert Repository(RepoStore(repo)).staged_roles() == []
    assert published(repo, "targets").signed.version == before
    # other content: a new version (the daemon key that signed v2 refuses other bytes at v2)
    assert run("targets", "add", str(write(tmp_path / "y.txt", "y\n")), repo=repo) == 0
    assert run("publish", repo=repo) == 0
    assert published(repo, "targets").signed.version == before + 2
    server = served(repo)
    assert fetch(server, repo, tmp_path, "y.txt") == b"y\n"
    assert fetch(server, repo, tmp_path, "x.txt") is None

    # a delegation staged and aborted takes its new role with it
    assert run("delegate", "pkgs", "--paths", "pkgs/*", "--create-key", repo=repo) == 0
    assert run("abort", "targets", repo=repo) == 0
    assert Repository(RepoStore(repo)).staged_roles() == []
    # a signed staged root is kept unless --force (root versions are consecutive)
    assert run("bump", "root", repo=repo) == 0
    assert run("sign", "root", repo=repo) == 0
    capsys.readouterr()
    assert run("abort", "root", repo=repo) == 1
    assert "root versions are consecutive" in capsys.readouterr().err
    assert run("publish", repo=repo) == 0
    assert run("abort", repo=repo) == 1  # nothing staged
    assert fetch(server, repo, tmp_path, "y.txt") == b"y\n"


def test_expiry_set(
    limited: Daemon, tmp_path: Path, served: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = new_repo(tmp_path)
    assert run("delegate", "bins", "--hash-bins", "4", "--create-key", repo=repo) == 0
    assert run("publish", repo=repo) == 0
    capsys.readouterr()
    assert run("expiry", "set", "targets", "30d", repo=repo) == 0
    assert "staged targets" in capsys.readouterr().out
    assert run("expiry", "set", "bins", "12h", repo=repo) == 0
    assert run("expiry", "set", "timestamp", "2h", repo=repo) == 0
    assert "from the next publish/refresh" in capsys.readouterr().out
    assert run("publish", repo=repo) == 0
    now = Repository(RepoStore(repo)).now()

    def left(role: str) -> timedelta:
        return published(repo, role).signed.expires - now

    assert timedelta(days=29) < left("targets") <= timedelta(days=30)
    assert timedelta(hours=11) < left("bins-2") <= timedelta(hours=12)
    assert timedelta(hours=1) < left("timestamp") <= timedelta(hours=2)
    assert run("expiry", "show", repo=repo) == 0
    out = capsys.readouterr().out
    assert "timestamp  2h" in out and "bins       12h" in out
    assert fetch(served(repo), repo, tmp_path, "none") is None


def test_meta_lengths_and_hashes(
    limited: Daemon, tmp_path: Path, served: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = new_repo(tmp_path, "--meta-length", "on", "--meta-hashes", "sha256")
    assert run("delegate", "pkgs", "--paths", "pkgs/*", "--create-key", repo=repo) == 0
    add = ["targets", "add", str(write(tmp_path / "p.txt", "p\n")), "--prefix", "pkgs/"]
    assert run(*add, "--role", "pkgs", repo=repo) == 0
    capsys.readouterr()
    assert run("publish", repo=repo) == 0
    assert "3 signing round trip(s)" in capsys.readouterr().out  # roles, snapshot, timestamp
    snapshot = published(repo, "snapshot")
    meta = snapshot.signed.meta["pkgs.json"]
    data = (repo / "metadata" / f"{meta.version}.pkgs.json").read_bytes()
    assert meta.length == len(data) and meta.hashes == {"sha256": hashlib.sha256(data).hexdigest()}
    snap_meta = published(repo, "timestamp").signed.snapshot_meta
    assert snap_meta.length and "sha256" in (snap_meta.hashes or {})
    server = served(repo)
    assert fetch(server, repo, tmp_path, "pkgs/p.txt") == b"p\n"

    # a metadata file whose bytes change (signature still valid) no longer matches
    path = repo / "metadata" / f"{meta.version}.pkgs.json"
    original = path.read_bytes()
    path.write_bytes(json.dumps(json.loads(original)).encode())
    with pytest.raises(LengthOrHashMismatchError):
        fetch(server, repo, tmp_path, "pkgs/p.txt")
    path.write_bytes(original)

    # switched to sha512 and no lengths later: the next publish lists those
    assert run("config", "--meta-hashes", "sha512", "--meta-length", "off", repo=repo) == 0
    assert run("refresh", "--force", repo=repo) == 0
    entry = published(repo, "snapshot").signed.meta["pkgs.json"]
    assert entry.length is None and list(entry.hashes or {}) == ["sha512"]
    assert fetch(server, repo, tmp_path, "pkgs/p.txt") == b"p\n"
    assert run("config", "--meta-hashes", "md5", repo=repo) == 1


def test_target_hashes_and_custom_metadata(
    limited: Daemon, tmp_path: Path, served: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = new_repo(tmp_path)
    custom = {"type": "wheel", "python": ">=3.11"}
    add = ["targets", "add", str(write(tmp_path / "w.whl", "wheel\n"))]
    assert run(*add, "--hash", "sha256,sha512", "--custom", json.dumps(custom), repo=repo) == 0
    assert run("publish", repo=repo) == 0
    info = published(repo, "targets").signed.targets["w.whl"]
    assert set(info.hashes) == {"sha256", "sha512"} and info.custom == custom
    for digest in info.hashes.values():  # served under each of its hashes
        assert (repo / "targets" / f"{digest}.w.whl").read_bytes() == b"wheel\n"
    server = served(repo)
    client = updater(server, tmp_path / "client", (repo / "metadata/1.root.json").read_bytes())
    client.refresh()
    found = client.get_targetinfo("w.whl")
    assert found is not None and found.custom == custom
    assert Path(client.download_target(found)).read_bytes() == b"wheel\n"

    # sha512 only, as the repository default; ngclient fetches DIR/SHA512.NAME
    assert run("config", "--target-hashes", "sha512", repo=repo) == 0
    assert run("targets", "add", str(write(tmp_path / "s.txt", "s\n")), repo=repo) == 0
    assert run("publish", repo=repo) == 0
    assert list(published(repo, "targets").signed.targets["s.txt"].hashes) == ["sha512"]
    assert fetch(server, repo, tmp_path, "s.txt") == b"s\n"
    capsys.readouterr()
    for bad in (["--custom", "[1]"], ["--custom", "{x"], ["--hash", "md5"]):
        assert run(*add, *bad, repo=repo) == 1
        assert capsys.readouterr().err.count("\n") == 1


def test_status_json(limited: Daemon, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = new_repo(tmp_path, "--threshold", "targets=2")
    assert run("targets", "add", str(write(tmp_path / "x.txt", "x\n")), repo=repo) == 0
    keys = published(repo, "root").signed.roles["targets"].keyids
    assert run("sign", "targets", "--key", keys[1], repo=repo) == 0
    capsys.readouterr()
    assert run("status", "--json", repo=repo) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["staged"] == ["targets"]
    roles = {r["role"]: r for r in status["roles"]}
    targets = roles["targets"]
    assert (targets["published_version"], targets["staged_version"]) == (1, 2)
    assert not targets["signed_enough"] and targets["thresholds"][0]["missing"] == 1
    assert targets["thresholds"][0]["signed"] == [keys[1]]
    assert roles["timestamp"]["signed_enough"] and not roles["timestamp"]["expired"]
    assert roles["root"]["expires"].endswith("Z")


def test_publish_256_bins_under_a_rate_limit_with_progress(
    limited: Daemon, tmp_path: Path, served: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """Burst 100, 259 signatures: refused whole, then batches of 100 waiting as told."""
    repo = new_repo(tmp_path)
    assert run("delegate", "bins", "--hash-bins", "256", "--create-key", repo=repo) == 0
    files = make_files(tmp_path / "in", 300)
    assert run("targets", "add", "-q", str(tmp_path / "in"), repo=repo) == 0
    capsys.readouterr()
    assert run("publish", repo=repo) == 0
    captured = capsys.readouterr()
    assert "259 signatures" in captured.out
    trips = int(captured.out.split("signatures, ")[1].split()[0])
    assert trips >= 4  # the refused batch of 259, then 100 + 100 + 59
    assert "signing [" in captured.err and "259/259" in captured.err
    assert "writing [" in captured.err
    server = served(repo)
    for name in ("sub/file0.txt", "file151.txt", "sub/file298.txt"):
        assert fetch(server, repo, tmp_path, name) == files[name]
    assert run("bump", "bins", repo=repo) == 0
    assert run("publish", "-q", repo=repo) == 0  # quiet: no bars
    assert "[" not in capsys.readouterr().err
    assert fetch(server, repo, tmp_path, "file151.txt") == files["file151.txt"]
