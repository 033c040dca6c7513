"""``tuf-repo`` with keys that are not in the daemon: ``file2:``, ``hsm:`` and cloud KMS.

``hsm:`` keys live in a SoftHSM token of their own (its own SOFTHSM2_CONF, two tokens
told apart by label), never the daemon's. The commands that touch it run ``tuf-repo``
as a separate process, as an operator would: a PKCS#11 module reads SOFTHSM2_CONF once
per process, so the test process never loads it. The PIN comes from ``TUF_REPO_PIN``.

Cloud KMS keys cannot be used here (no network, no cloud accounts): what is tested is
that such URIs are routed to securesystemslib's signers and refused in one line, with
nothing created or written. AWS is kept from looking for a region or credentials.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner
from test_client_repo import (
    client_env,
    fetches_first,
    make_files,
    published,
    refused,
    repo_files,
    run,
)

from harness import MODULE, PIN, ROOT, Daemon, create_token

__all__ = ["client_env"]  # the fixture, shared with test_client_repo

_GENERATE = r"""
import os, sys, pkcs11
from pkcs11 import Attribute, KeyType
from pkcs11.util.ec import encode_named_curve_parameters
token = pkcs11.lib(sys.argv[1]).get_token(token_label=sys.argv[2])
with token.open(rw=True, user_pin=os.environ["SIGNER_PIN"]) as session:
    params = session.create_domain_parameters(
        KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")}, local=True
    )
    params.generate_keypair(store=True, id=bytes([int(sys.argv[3])]), label="offline-root")
"""


def file_key(directory: Path, name: str) -> tuple[str, str]:
    """A file2: key made here; returns (URI, key ID)."""
    signer = CryptoSigner.generate_ecdsa()
    path = directory / f"{name}.pem"
    path.write_bytes(signer.private_bytes)
    return f"file2:{path}", signer.public_key.keyid


def config(repo: Path) -> dict[str, str]:
    return dict(json.loads((repo / "tuf-repo.json").read_text())["key_uris"])


@pytest.mark.usefixtures("client_env")
def test_file_keys_beside_daemon_keys(
    daemon: Daemon, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    root_uri, root_id = file_key(keys, "root")
    targets_uri, targets_id = file_key(keys, "targets")
    repo = tmp_path / "repo"
    args = ("init", "--key", f"root={root_uri}", "--key", f"targets={targets_uri}")
    assert run(*args, "--create-keys", "--algorithm", "ed25519", repo=repo) == 0
    assert config(repo)[root_id] == root_uri and config(repo)[targets_id] == targets_uri

    files = make_files(tmp_path / "in", 3)
    assert run("targets", "add", str(tmp_path / "in"), repo=repo) == 0
    assert run("publish", repo=repo) == 0  # targets signed by the file key it remembered
    assert targets_id in published(repo, "targets").signatures

    # rotate targets to another file key; root v2 signed by the file root key
    new_uri, new_id = file_key(keys, "targets2")
    assert (
        run("rotate", "targets", "--add-key", new_uri, "--remove-key", targets_id, repo=repo) == 0
    )
    assert run("publish", repo=repo) == 0
    assert published(repo, "root").signed.version == 2
    assert list(published(repo, "targets").signatures) == [new_id]

    # the key file moves: `sign --uri` tells the repository where it is now
    (keys / "targets2.pem").rename(keys / "moved.pem")
    assert run("bump", "targets", repo=repo) == 0
    assert run("publish", repo=repo) == 1
    assert "private key not found" in capsys.readouterr().err.lower()
    capsys.readouterr()
    assert run("sign", "--uri", f"file2:{keys / 'moved.pem'}", repo=repo) == 0
    assert f"key {new_id[:8]}: signs with file2:" in capsys.readouterr().out
    assert run("publish", repo=repo) == 0

    fetches_first(repo, tmp_path, files)

    # refusals: one line, nothing written, no daemon key created
    stranger, _ = file_key(tmp_path, "stranger")
    assert "which no role of this repository uses" in refused(
        capsys, repo, "sign", "--uri", stranger
    )
    (tmp_path / "junk.pem").write_text("not a key\n")
    assert "cannot use key file2:" in refused(
        capsys, repo, "rotate", "root", "--add-key", f"file2:{tmp_path / 'junk.pem'}"
    )
    assert "unknown URI scheme 'nosuch'" in refused(
        capsys, repo, "rotate", "root", "--add-key", "nosuch:key"
    )
    assert "reads no public key for 'gnupg'" in refused(
        capsys, repo, "rotate", "root", "--add-key", "gnupg:"
    )
    count = len(daemon.client().list_keys())
    fresh = tmp_path / "fresh"
    assert "no such file" in refused(
        capsys, fresh, "init", "--key", "root=file2:/nonexistent.pem", "--create-keys"
    )
    assert not (fresh / "tuf-repo.json").exists()
    assert len(daemon.client().list_keys()) == count


KMS_URIS = [
    (
        "gcpkms:projects/p/locations/global/keyRings/tuf/cryptoKeys/root/cryptoKeyVersions/1",
        "google-cloud-kms",
    ),
    # boto3 installed: it wants a region; not installed: securesystemslib says what to add
    ("awskms:alias/tuf-root", "region|requires aws-kms"),
    ("azurekms://tufvault.vault.azure.net/keys/root/1", "azure-identity"),
    ("azurekms://tufvault/elsewhere", "want azurekms://VAULT.vault.azure.net/keys/NAME"),
]


@pytest.mark.parametrize(("uri", "why"), KMS_URIS)
@pytest.mark.usefixtures("client_env")
def test_kms_uris_are_routed_and_refused_in_one_line(
    uri: str,
    why: str,
    daemon: Daemon,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No network here: the KMS signer is reached and its failure is one clear line."""
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    count = len(daemon.client().list_keys())
    repo = tmp_path / "repo"
    err = refused(capsys, repo, "init", "--key", f"root={uri}", "--create-keys")
    assert f"cannot use key {uri}" in err and any(w in err for w in why.split("|")), err
    assert not (repo / "tuf-repo.json").exists()
    assert len(daemon.client().list_keys()) == count  # refused before any key was created

    assert run("init", "--create-keys", "--algorithm", "ed25519", repo=repo) == 0
    err = refused(capsys, repo, "rotate", "root", "--add-key", uri)
    assert any(w in err for w in why.split("|")), err
    assert not list((repo / "staging").glob("*.json"))


def cli(repo: Path, *argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``tuf-repo`` as its own process (its own PKCS#11 module state), no terminal."""
    return subprocess.run(
        [sys.executable, "-m", "signer_client.repo_cli", "-C", str(repo), *argv],
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1, proc
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr


@pytest.mark.usefixtures("client_env")
def test_hsm_key_in_a_separate_token(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tokens = tmp_path / "ceremony-hsm"
    create_token(tokens, "hsm-a")
    hsm_env = create_token(tokens, "hsm-b")  # two tokens: the label picks one
    subprocess.run(
        [sys.executable, "-c", _GENERATE, MODULE, "hsm-b", "2"],
        env=dict(os.environ, **hsm_env),
        check=True,
        capture_output=True,
    )
    env = dict(os.environ)
    env.pop("SIGNER_PIN", None)
    env.update(
        SOFTHSM2_CONF=hsm_env["SOFTHSM2_CONF"],
        PYKCS11LIB=MODULE,
        PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "clients")]),
        TUF_REPO_PIN=PIN,
    )
    repo = tmp_path / "repo"
    assert run("init", "--create-keys", "--algorithm", "ed25519", repo=repo) == 0

    before = repo_files(repo)
    assert "Multiple PKCS#11 tokens found" in one_line_error(
        cli(repo, "rotate", "root", "--add-key", "hsm:2", env=env)
    )
    assert "No PKCS#11 token found for label nope" in one_line_error(
        cli(repo, "rotate", "root", "--add-key", "hsm:2?label=nope", env=env)
    )
    assert "could not find ECDSA key" in one_line_error(
        cli(repo, "rotate", "root", "--add-key", "hsm:7?label=hsm-b", env=env)
    )
    assert repo_files(repo) == before

    uri = "hsm:2?label=hsm-b"
    proc = cli(repo, "rotate", "root", "--add-key", uri, "--threshold", "2", env=env)
    assert proc.returncode == 0, proc.stderr
    (hsm_id,) = [k for k, v in config(repo).items() if v == uri]

    wrong = cli(repo, "publish", env=dict(env, TUF_REPO_PIN="not-the-pin"))
    assert (
        wrong.returncode == 1 and "PinIncorrect" in wrong.stderr and "Traceback" not in wrong.stderr
    )
    no_pin = {k: v for k, v in env.items() if k != "TUF_REPO_PIN"}
    proc = cli(repo, "publish", env=no_pin)
    assert proc.returncode == 1 and "set TUF_REPO_PIN or run from a terminal" in proc.stderr
    assert not (repo / "metadata" / "2.root.json").exists()

    proc = cli(repo, "publish", env=env)
    assert proc.returncode == 0, proc.stderr
    root = published(repo, "root")
    assert root.signed.version == 2 and hsm_id in root.signatures
    files = make_files(tmp_path / "in", 2)
    assert run("targets", "add", str(tmp_path / "in"), repo=repo) == 0
    assert run("publish", repo=repo) == 0
    fetches_first(repo, tmp_path, files)
