"""The ``signer://`` securesystemslib Signer: plain python-tuf code signs through the daemon."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from securesystemslib.signer import SIGNER_FOR_URI_SCHEME, Signer, SSlibKey
from tuf.api.metadata import Metadata, Root, Targets

import signer_client
from harness import ROOT, Daemon
from signer_client import DaemonSigner, SignatureMismatchError
from signer_client.client import tuf_key
from signer_client.errors import FailedPreconditionError
from signer_client.tuf_signer import key_uri, parse_uri, sign_many


@pytest.fixture(scope="module")
def config_file(daemon: Daemon, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = daemon.client_config("alice")
    path = tmp_path_factory.mktemp("client") / "client.toml"
    path.write_text(
        f'address = "{cfg.address}"\nca = "{cfg.ca}"\ncert = "{cfg.cert}"\nkey = "{cfg.key}"\n'
    )
    return path


@pytest.fixture
def env_config(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("SIGNER_CLIENT_CONFIG", str(config_file))
    yield config_file


_REGISTRATION = """
from securesystemslib.signer import SIGNER_FOR_URI_SCHEME, Signer
assert "signer" not in SIGNER_FOR_URI_SCHEME, "registered before signer_client was imported"
try:
    Signer.from_priv_key_uri("signer://h:1/abc", None)
except ValueError:
    pass  # securesystemslib: unsupported scheme
else:
    raise AssertionError("signer:// resolved without signer_client")
import signer_client
from signer_client.tuf_signer import DaemonSigner
assert SIGNER_FOR_URI_SCHEME["signer"] is DaemonSigner, SIGNER_FOR_URI_SCHEME["signer"]
assert signer_client.DaemonSigner is DaemonSigner
"""


def test_registered_on_import() -> None:
    """A fresh interpreter: ``import signer_client`` alone makes signer:// resolve."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "clients")]))
    done = subprocess.run(
        [sys.executable, "-c", _REGISTRATION], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    # and in this process, the class the scheme resolves to is the one exported
    assert SIGNER_FOR_URI_SCHEME["signer"] is signer_client.tuf_signer.DaemonSigner


def test_uri_parsing() -> None:
    assert parse_uri("signer://h:7443/abc") == ("h:7443", "abc", None)
    assert parse_uri("signer://h:1/abc?config=/etc/c.toml") == ("h:1", "abc", "/etc/c.toml")
    assert key_uri("h:2", "k") == "signer://h:2/k"
    for bad in ("signer://h:1/", "signer:///abc", "hsm://h:1/abc", "signer://h:1/a/b"):
        with pytest.raises(ValueError):
            parse_uri(bad)


def test_plain_python_tuf_signs_through_the_daemon(daemon: Daemon, env_config: Path) -> None:
    """The documented example: Metadata.sign(signer, append=True) with a threshold of 2."""
    with daemon.client() as client:
        keys = [
            tuf_key(client.create_key(f"plugin-{i}", alg, role="root"))
            for i, alg in enumerate(("ecdsa-sha2-nistp256", "ed25519"))
        ]
    root = Metadata(Root())
    for key in keys:
        root.signed.add_key(key, "root")
    root.signed.roles["root"].threshold = 2
    for key in keys:
        signer = Signer.from_priv_key_uri(f"signer://{daemon.address}/{key.keyid}", key)
        assert isinstance(signer, DaemonSigner) and signer.public_key == key
        root.sign(signer, append=True)
    assert set(root.signatures) == {k.keyid for k in keys}
    root.signed.verify_delegate("root", root.signed_bytes, root.signatures)
    # and it survives a round trip through bytes, as clients read it
    again = Metadata[Root].from_bytes(root.to_bytes())
    again.signed.verify_delegate("root", again.signed_bytes, again.signatures)


def test_config_in_the_uri(
    daemon: Daemon, config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SIGNER_CLIENT_CONFIG", raising=False)
    for name in ("SIGNER_ADDRESS", "SIGNER_CA", "SIGNER_CERT", "SIGNER_KEY"):
        monkeypatch.delenv(name, raising=False)
    with daemon.client() as client:
        key = tuf_key(client.create_key("uri-config", "ed25519", role="targets"))
    uri = f"signer://{daemon.address}/{key.keyid}?config={config_file}"
    md = Metadata(Targets())
    md.sign(Signer.from_priv_key_uri(uri, key))
    key.verify_signature(md.signatures[key.keyid], md.signed_bytes)


def test_signature_is_checked_against_the_trusted_key(daemon: Daemon, env_config: Path) -> None:
    """A daemon answering with another key's signature is caught before anyone uses it."""
    with daemon.client() as client:
        real = client.create_key("real", role="targets")
        other = tuf_key(client.create_key("other", role="targets"))
    lying = SSlibKey(real.key_id, other.keytype, other.scheme, other.keyval)
    signer = Signer.from_priv_key_uri(key_uri(daemon.address, real.key_id), lying)
    with pytest.raises(SignatureMismatchError):
        signer.sign(b"payload")
    with pytest.raises(ValueError):
        DaemonSigner(signer.client, other.keyid, lying)  # type: ignore[attr-defined]


def test_sign_many_batches_and_reports_per_item(daemon: Daemon, env_config: Path) -> None:
    with daemon.client() as client:
        a = client.create_key("many-a", "ed25519", role="targets")
        b = client.create_key("many-b", role="targets")
        retired = client.create_key("many-retired", role="targets")
        client.retire_key(retired.key_id)
    signers = [
        Signer.from_priv_key_uri(key_uri(daemon.address, k.key_id), tuf_key(k))
        for k in (a, b, retired)
    ]
    items = [(signers[i % 2], f"payload {i}".encode()) for i in range(5)]
    results, trips = sign_many(items)  # type: ignore[arg-type]
    assert trips == 1 and len(results) == 5
    for (signer, payload), sig in zip(items, results, strict=True):
        signer.public_key.verify_signature(sig, payload)  # type: ignore[arg-type]
    results, trips = sign_many(items, max_batch=2)  # type: ignore[arg-type]
    assert trips == 3
    results, trips = sign_many([(signers[2], b"x"), (signers[0], b"y")])  # type: ignore[list-item]
    assert isinstance(results[0], FailedPreconditionError)
    assert results[1].keyid == a.key_id  # type: ignore[union-attr]
    assert os.environ["SIGNER_CLIENT_CONFIG"]
