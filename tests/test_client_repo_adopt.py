"""``tuf-repo adopt``: take over a repository built by plain python-tuf code, then move it
into the daemon by rotation.

The source repository is made here with ``tuf.api.metadata`` and local ed25519 keys (as
python-tuf's examples do): root v1 -> v2 (timestamp key rotated), targets v2, a
delegated role with its own key, consistent snapshots. A client that trusted the old
root must follow the rotation to daemon keys; a fresh client trusting root v1 too.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from securesystemslib.signer import CryptoSigner
from test_client_repo import Served, client_env, make_files, run, updater
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from signer_client.repo import Repository, RepoStore

__all__ = ["client_env"]  # the fixture, shared with test_client_repo

TOP = ("root", "targets", "snapshot", "timestamp")


class PlainRepo:
    """A repository written by plain python-tuf code, keys in memory and as PEM files."""

    def __init__(self, directory: Path, keys: Path) -> None:
        self.dir = directory
        self.meta = directory / "metadata"
        self.meta.mkdir(parents=True)
        keys.mkdir(parents=True, exist_ok=True)
        self.keys = keys
        self.signers: dict[str, CryptoSigner] = {}
        for name in (*TOP, "pkgs"):
            self.new_key(name)
        expires = datetime.now(UTC).replace(microsecond=0) + timedelta(days=30)
        self.expires = expires
        self.root = Metadata(Root(expires=expires, consistent_snapshot=True))
        for role in TOP:
            self.root.signed.add_key(self.signers[role].public_key, role)
        self.targets = Metadata(Targets(expires=expires))
        self.targets.signed.delegations = Delegations(
            keys={}, roles={"pkgs": DelegatedRole("pkgs", [], 1, True, paths=["pkgs/*"])}
        )
        self.targets.signed.add_key(self.signers["pkgs"].public_key, "pkgs")
        self.pkgs = Metadata(Targets(expires=expires))
        self.snapshot = Metadata(Snapshot(expires=expires))
        self.timestamp = Metadata(Timestamp(expires=expires))
        self.contents: dict[str, bytes] = {}

    def new_key(self, name: str) -> CryptoSigner:
        signer = CryptoSigner.generate_ed25519()
        self.signers[name] = signer
        (self.keys / f"{name}.pem").write_bytes(signer.private_bytes)
        return signer

    def uri(self, name: str) -> str:
        return f"file2:{self.keys / f'{name}.pem'}"

    def add_target(self, md: Metadata[Any], path: str, data: bytes) -> None:
        info = TargetFile.from_data(path, data, ["sha256"])
        md.signed.targets[path] = info
        directory, sep, name = path.rpartition("/")
        dest = self.dir / "targets" / f"{directory}{sep}{info.hashes['sha256']}.{name}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        self.contents[path] = data

    def write(self, md: Metadata[Any], role: str, *signers: CryptoSigner) -> None:
        md.signatures.clear()
        for signer in signers or (self.signers[role],):
            md.sign(signer, append=True)
        name = "timestamp.json" if role == "timestamp" else f"{md.signed.version}.{role}.json"
        (self.meta / name).write_bytes(md.to_bytes(JSONSerializer(compact=False)))

    def publish_roles(self) -> None:
        """Snapshot and timestamp over the current targets and pkgs versions."""
        self.snapshot.signed.meta = {
            "targets.json": MetaFile(self.targets.signed.version),
            "pkgs.json": MetaFile(self.pkgs.signed.version),
        }
        self.write(self.snapshot, "snapshot")
        self.timestamp.signed.snapshot_meta = MetaFile(self.snapshot.signed.version)
        self.write(self.timestamp, "timestamp")


def build_plain_repo(directory: Path, keys: Path) -> PlainRepo:
    """v1 of everything, then root v2 (new timestamp key) and targets v2 (one more file)."""
    repo = PlainRepo(directory, keys)
    for i in range(3):
        repo.add_target(repo.targets, f"files/f{i}.txt", f"file {i}\n".encode() * (i + 1))
    repo.add_target(repo.pkgs, "pkgs/a.tgz", b"package a\n")
    repo.write(repo.root, "root")
    repo.write(repo.targets, "targets")
    repo.write(repo.pkgs, "pkgs", repo.signers["pkgs"])
    repo.publish_roles()
    # history: root v2 with a new timestamp key, targets v2 with another file
    old_timestamp = repo.signers["timestamp"].public_key.keyid
    repo.root.signed.revoke_key(old_timestamp, "timestamp")
    repo.root.signed.add_key(repo.new_key("timestamp").public_key, "timestamp")
    repo.root.signed.version = 2
    repo.write(repo.root, "root")
    repo.add_target(repo.targets, "files/f3.txt", b"file 3\n")
    repo.targets.signed.version = 2
    repo.write(repo.targets, "targets")
    for md in (repo.snapshot, repo.timestamp):
        md.signed.version += 1
    repo.publish_roles()
    return repo


def client_download(up: Any, path: str) -> bytes:
    info = up.get_targetinfo(path)
    assert info is not None, path
    return Path(up.download_target(info)).read_bytes()


@pytest.mark.usefixtures("client_env")
def test_adopt_python_tuf_repository_and_rotate_into_daemon(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = build_plain_repo(tmp_path / "plain", tmp_path / "keys")
    old_ids = {role: plain.signers[role].public_key.keyid for role in (*TOP, "pkgs")}

    # a client that has been following the python-tuf repository
    source = Served(plain.dir)
    old_client = tmp_path / "old-client"
    up = updater(source, old_client, (plain.meta / "1.root.json").read_bytes())
    up.refresh()
    assert client_download(up, "files/f3.txt") == plain.contents["files/f3.txt"]
    source.close()

    repo = tmp_path / "repo"
    uris = [plain.uri(r) for r in ("root", "targets", "pkgs")]
    capsys.readouterr()
    assert run("adopt", str(plain.dir), *[a for u in uris for a in ("--key", u)], repo=repo) == 0
    out = capsys.readouterr().out
    assert "root v1..v2, targets v2, snapshot v2, timestamp v2, 1 delegated role(s)" in out
    assert "5 target(s)" in out and "remembered 3 private key URI(s)" in out
    # history kept byte for byte
    for path in plain.meta.iterdir():
        assert (repo / "metadata" / path.name).read_bytes() == path.read_bytes()
    assert run("status", repo=repo) == 0

    # move every role into the daemon: root v3 signed by the old root key and the new one
    for role in (*TOP, "pkgs"):
        assert (
            run(
                "rotate",
                role,
                "--create-key",
                "--remove-key",
                old_ids[role],
                "--algorithm",
                "ed25519",
                repo=repo,
            )
            == 0
        )
    assert run("publish", repo=repo) == 0
    root = Repository(RepoStore(repo)).published("root")
    assert root is not None and root.signed.version == 3
    assert old_ids["root"] in root.signatures  # the hand-over signature of the old key
    assert not set(old_ids.values()) & set(root.signed.keys)

    # the old keys are gone for good: later changes need only the daemon
    shutil.rmtree(tmp_path / "keys")
    new_files = make_files(tmp_path / "new", 2, stem="later")
    assert run("targets", "add", str(tmp_path / "new"), "--prefix", "files/", repo=repo) == 0
    assert run("publish", repo=repo) == 0

    served = Served(repo)
    try:
        # the client that trusted the old root follows the rotation
        up = updater(served, old_client, None)
        up.refresh()
        assert up._trusted_set.root.version == 3
        for path in ("files/f0.txt", "pkgs/a.tgz"):
            assert client_download(up, path) == plain.contents[path]
        name, data = next(iter(new_files.items()))
        assert client_download(up, f"files/{name}") == data
        # a fresh client trusting only root v1 of the python-tuf repository
        fresh = updater(served, tmp_path / "fresh", (plain.meta / "1.root.json").read_bytes())
        fresh.refresh()
        assert client_download(fresh, "pkgs/a.tgz") == b"package a\n"
        assert client_download(fresh, "files/f3.txt") == b"file 3\n"
    finally:
        served.close()


def _tamper_signature(plain: PlainRepo) -> None:
    path = plain.meta / "2.root.json"
    data = json.loads(path.read_text())
    sig = data["signatures"][0]
    sig["sig"] = ("0" if sig["sig"][0] != "0" else "1") + sig["sig"][1:]
    path.write_text(json.dumps(data))


def _tamper_target(plain: PlainRepo) -> None:
    victim = next((plain.dir / "targets" / "files").glob("*.f1.txt"))
    victim.write_bytes(b"not what the metadata says\n")


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("bad-root-signature", "2.root.json"),
        ("tampered-target", "files/f1.txt"),
        ("root-gap", "have gaps"),
        ("unknown-key-uri", "which no role of"),
        ("not-a-repository", "no timestamp.json"),
        ("bad-uri", "unknown URI scheme"),
        ("already-a-repository", "already a tuf-repo repository"),
    ],
)
@pytest.mark.usefixtures("client_env")
def test_adopt_refusals(
    case: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each refusal: exit 1, one stderr line, no traceback, no repository written."""
    plain = build_plain_repo(tmp_path / "plain", tmp_path / "keys")
    repo = tmp_path / "repo"
    extra: list[str] = []
    source = plain.dir
    if case == "bad-root-signature":
        _tamper_signature(plain)
    elif case == "tampered-target":
        _tamper_target(plain)
    elif case == "root-gap":
        (plain.meta / "2.root.json").rename(plain.meta / "3.root.json")
    elif case == "unknown-key-uri":
        stranger = CryptoSigner.generate_ed25519()
        (tmp_path / "stranger.pem").write_bytes(stranger.private_bytes)
        extra = ["--key", f"file2:{tmp_path / 'stranger.pem'}"]
    elif case == "not-a-repository":
        source = tmp_path / "keys"
    elif case == "bad-uri":
        extra = ["--key", "nosuch:thing"]
    elif case == "already-a-repository":
        assert run("adopt", str(plain.dir), repo=repo) == 0
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    capsys.readouterr()
    assert run("adopt", str(source), *extra, repo=repo) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tuf-repo: error:"), err
    assert expected in err and "Traceback" not in err
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert [p for p in after if p.name != ".tuf-repo.lock" and p != Path("repo")] == [
        p for p in before if p.name != ".tuf-repo.lock" and p != Path("repo")
    ]


@pytest.mark.usefixtures("client_env")
def test_adopt_go_tuf_layout_and_no_target_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """go-tuf keeps metadata directly in ``repository/``; RSTUF keeps no target files.

    Both adopt: the metadata is verified and copied, missing target files are counted
    (they are served from elsewhere), and the repository publishes afterwards.
    """
    plain = build_plain_repo(tmp_path / "plain", tmp_path / "keys")
    go_tuf = tmp_path / "go-tuf" / "repository"
    shutil.copytree(plain.meta, go_tuf)
    shutil.copytree(plain.dir / "targets", go_tuf / "targets")
    repo = tmp_path / "repo"
    capsys.readouterr()
    assert run("adopt", str(go_tuf), repo=repo) == 0
    assert "5 target file(s) copied; 0 target file(s) not under" in capsys.readouterr().out
    assert run("verify", "--all-targets", repo=repo) == 0

    rstuf = tmp_path / "rstuf"
    shutil.copytree(plain.meta, rstuf / "metadata")
    other = tmp_path / "repo2"
    capsys.readouterr()
    assert run("adopt", str(rstuf), "--key", plain.uri("targets"), repo=other) == 0
    assert "0 target file(s) copied; 5 target file(s) not under" in capsys.readouterr().out
    assert run("bump", "targets", repo=other) == 0
    assert run("publish", repo=other) == 1  # snapshot/timestamp keys are not given
    assert run("sign", "--uri", plain.uri("snapshot"), repo=other) == 0
    assert run("publish", repo=other) == 1  # timestamp v2 key still missing
    assert "timestamp: 0/1" in capsys.readouterr().err
    assert run("rotate", "timestamp", "--create-key", "--algorithm", "ed25519", repo=other) == 0
    assert (
        run(
            "rotate",
            "timestamp",
            "--remove-key",
            plain.signers["timestamp"].public_key.keyid,
            repo=other,
        )
        == 0
    )
    assert run("sign", "--uri", plain.uri("root"), repo=other) == 0
    assert run("publish", repo=other) == 0
    assert Repository(RepoStore(other)).published("root").signed.version == 3  # type: ignore[union-attr]
