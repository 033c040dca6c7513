"""Offline signing with ``tuf-repo``: keys that never touch a network.

The offline key is an ECDSA P-256 key made with ``cryptography`` in this process, as on
an air-gapped machine: the repository knows only its public key (``offline:PEM``), the
test signs the exported bytes itself, and imports the signature. Every refusal of an
import leaves the staged metadata and settings byte for byte as they were.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from securesystemslib.signer import SSlibKey
from test_client_repo import (
    client_env,
    fetches_first,
    make_files,
    published,
    refused,
    run,
)

from signer_client.repo import Repository, RepoStore

__all__ = ["client_env"]  # the fixture, shared with test_client_repo


class OfflineKey:
    """A key on the air-gapped machine; only its public PEM crosses over."""

    def __init__(self, directory: Path, name: str = "offline") -> None:
        self.private = ec.generate_private_key(ec.SECP256R1())
        self.pem = directory / f"{name}.pub.pem"
        self.pem.write_bytes(
            self.private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        self.key_id = SSlibKey.from_crypto(self.private.public_key()).keyid

    @property
    def spec(self) -> str:
        return f"offline:{self.pem}"

    def sign(self, payload: bytes) -> dict[str, str]:
        der = self.private.sign(payload, ec.ECDSA(hashes.SHA256()))
        return {"keyid": self.key_id, "sig": der.hex()}


def sign_exported(key: OfflineKey, payload: Path, out: Path) -> Path:
    """What the ceremony laptop does: read FILE.json, sign FILE, fill in the signature."""
    request = json.loads(payload.with_name(payload.name + ".json").read_text())
    wanted = {k for t in request["thresholds"] for k in t["keys"]}
    assert key.key_id in wanted
    request["signatures"].append(key.sign(payload.read_bytes()))
    out.write_text(json.dumps(request))
    return out


def status(capsys: pytest.CaptureFixture[str], repo: Path) -> str:
    capsys.readouterr()
    assert run("status", repo=repo) == 0
    return capsys.readouterr().out


@pytest.mark.usefixtures("client_env")
def test_root_ceremony_at_init(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Root v1 signed only by an offline key: init stages, export, sign, import, publish."""
    key = OfflineKey(tmp_path)
    repo = tmp_path / "repo"
    assert run("init", "--key", f"root={key.spec}", "--create-keys", repo=repo) == 1
    err = capsys.readouterr().err
    assert f"key {key.key_id[:8]} is offline" in err
    assert not (repo / "metadata" / "1.root.json").exists()
    assert f"0/1 MISSING 1 (from {key.key_id[:8]})" in status(capsys, repo)

    payload = tmp_path / "root-v1.bin"
    assert run("sign", "--export", "root", str(payload), repo=repo) == 0
    staged = Repository(RepoStore(repo)).current("root")
    assert staged is not None and payload.read_bytes() == staged.signed_bytes
    assert (
        run("sign", "--import", str(sign_exported(key, payload, tmp_path / "s.json")), repo=repo)
        == 0
    )
    assert "1/1" in status(capsys, repo)
    assert run("publish", repo=repo) == 0

    files = make_files(tmp_path / "in", 2)
    assert run("targets", "add", str(tmp_path / "in"), repo=repo) == 0
    assert run("publish", repo=repo) == 0  # targets, snapshot, timestamp: daemon keys only
    fetches_first(repo, tmp_path, files)


@pytest.mark.usefixtures("client_env")
def test_offline_root_key_threshold_two(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Root v2 with a daemon key and an offline key (threshold 2); partial signing shown."""
    repo = tmp_path / "repo"
    assert run("init", "--create-keys", "--algorithm", "ed25519", repo=repo) == 0
    key = OfflineKey(tmp_path)
    assert run("rotate", "root", "--add-key", key.spec, "--threshold", "2", repo=repo) == 0
    assert run("publish", repo=repo) == 1  # the daemon key signs; the offline key cannot
    assert "is offline: `tuf-repo sign --export" in capsys.readouterr().err
    text = status(capsys, repo)
    assert f"root v2 keys 1/2 MISSING 1 (from {key.key_id[:8]})" in text

    payload = tmp_path / "root-v2.bin"
    capsys.readouterr()
    assert run("sign", "--export", "root", str(payload), repo=repo) == 0
    out = capsys.readouterr().out
    assert "root v2" in out and f"missing 1 (from {key.key_id[:8]})" in out
    request = json.loads((tmp_path / "root-v2.bin.json").read_text())
    assert request["role"] == "root" and request["version"] == 2
    assert request["thresholds"][0]["keys"][key.key_id]["uri"] == key.spec
    good = sign_exported(key, payload, tmp_path / "good.json")

    # refusals: nothing imported, nothing changed, one line each
    imposter = OfflineKey(tmp_path, "imposter")
    forged = {"keyid": key.key_id, "sig": imposter.sign(payload.read_bytes())["sig"]}
    cases: dict[str, tuple[Any, str]] = {
        "wrong-key": (forged, "does not verify over staged root v2"),
        "other-bytes": (key.sign(b"some other payload"), "does not verify"),
        "stranger": (imposter.sign(payload.read_bytes()), "is not a key of root v2"),
        "old-version": (
            {"role": "root", "version": 1, "signatures": [key.sign(payload.read_bytes())]},
            "it is for root v1 but v2 is staged",
        ),
        "unstaged-role": (
            {"role": "targets", "signatures": [key.sign(payload.read_bytes())]},
            "targets has no staged changes",
        ),
        "empty": ([], "no signatures in it"),
        "malformed": ([{"keyid": key.key_id, "sig": "not hex"}], 'want signatures as {"keyid"'),
    }
    for name, (content, expected) in cases.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(content))
        assert expected in refused(capsys, repo, "sign", "--import", str(path)), name
    (tmp_path / "garbage.json").write_text("{not json")
    assert "not JSON" in refused(capsys, repo, "sign", "--import", str(tmp_path / "garbage.json"))
    assert "No such file" in refused(capsys, repo, "sign", "--import", str(tmp_path / "none"))
    assert "targets has no staged changes" in refused(
        capsys, repo, "sign", "--export", "targets", str(tmp_path / "t.bin")
    )
    assert not (tmp_path / "t.bin").exists()
    assert "1/2 MISSING 1" in status(capsys, repo)

    capsys.readouterr()
    assert run("sign", "--import", str(good), repo=repo) == 0
    out = capsys.readouterr().out
    assert f"imported signature by {key.key_id[:8]} on root v2" in out
    assert "root v2 keys 2/2" in out
    assert run("sign", "--import", str(good), repo=repo) == 0  # again: harmless
    assert "already had signature" in capsys.readouterr().out
    assert run("publish", repo=repo) == 0
    root = published(repo, "root")
    assert root.signed.version == 2 and key.key_id in root.signatures

    files = make_files(tmp_path / "in", 2)
    assert run("targets", "add", str(tmp_path / "in"), repo=repo) == 0
    assert run("publish", repo=repo) == 0
    fetches_first(repo, tmp_path, files)

    # root v3 without the offline key must still carry its signature (old threshold)
    assert run("rotate", "root", "--remove-key", key.key_id, "--threshold", "1", repo=repo) == 0
    assert run("publish", repo=repo) == 1
    assert "root v2 keys 1/2 MISSING 1" in status(capsys, repo)
    payload3 = tmp_path / "root-v3.bin"
    assert run("sign", "--export", "root", str(payload3), repo=repo) == 0
    assert (
        run("sign", "--import", str(sign_exported(key, payload3, tmp_path / "v3.json")), repo=repo)
        == 0
    )
    assert run("publish", repo=repo) == 0
    assert published(repo, "root").signed.version == 3
    fetches_first(repo, tmp_path, files)
    assert os.listdir(repo / "staging") == []
