"""Two signerd replicas on one token and one PostgreSQL database behave as one signer."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from securesystemslib.formats import encode_canonical

from harness import Daemon, create_token, free_port
from signer_client.errors import ClientError

ROOT = Path(__file__).resolve().parent.parent


def _tuf(version: int, note: str = "") -> bytes:
    signed = {
        "_type": "targets",
        "spec_version": "1.0.31",
        "version": version,
        "expires": "2030-01-01T00:00:00Z",
        "targets": {},
    }
    if note:
        signed["custom"] = note
    return str(encode_canonical(signed)).encode()


@pytest.fixture
def replicas(tmp_path: Path, pg_cluster) -> Iterator[tuple[Daemon, Daemon]]:  # type: ignore[no-untyped-def]
    url = pg_cluster.fresh_database(f"replicas_{int(time.time() * 1000)}")
    password = tmp_path / "db-password"
    password.write_text(pg_cluster.password)
    password.chmod(0o600)
    env = create_token(tmp_path / "hsm")  # one token for both (a network HSM in production)
    daemons = []
    try:
        for name in ("a", "b"):
            root = tmp_path / name
            root.mkdir()
            if daemons:  # one PKI: a client's certificate works on every replica
                shutil.copytree(daemons[0].pki, root / "pki")
            daemon = Daemon(
                root=root,
                port=free_port(),
                env=env,
                clients=["admin", "alice"],
                state_options=f'url = "{url}"\npassword_file = "{password}"\nreplica = "{name}"',
            )
            daemon.start()
            daemons.append(daemon)
        yield daemons[0], daemons[1]
    finally:
        for daemon in daemons:
            daemon.stop()


def test_replicas_share_keys_versions_and_the_audit_chain(
    replicas: tuple[Daemon, Daemon], tmp_path: Path
) -> None:
    a, b = replicas
    with a.client("admin") as admin_a, b.client("admin") as admin_b:
        key = admin_a.create_key("repo", "ecdsa-sha2-nistp256", role="targets")
        # A key created through A signs at once through B.
        assert admin_b.sign(key.key_id, _tuf(1)).signature
        # A version signed through A can be neither rolled back nor forked through B.
        admin_a.sign(key.key_id, _tuf(5))
        for payload in (_tuf(4), _tuf(5, "fork")):
            with pytest.raises(ClientError) as refused:
                admin_b.sign(key.key_id, payload)
            assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert admin_b.sign(key.key_id, _tuf(5)).signature  # the same bytes again: fine
        # A retirement on A is refused by B within one second.
        admin_b.sign(key.key_id, b"raw before")  # B has the key cached
        admin_a.retire_key(key.key_id)
        retired = time.monotonic()
        while True:
            try:
                admin_b.sign(key.key_id, b"raw after")
            except ClientError as exc:
                assert exc.code == grpc.StatusCode.FAILED_PRECONDITION, exc
                break
            assert time.monotonic() - retired < 1.0, "B still signs with a key retired on A"
            time.sleep(0.02)
    # One audit chain for both, verifiable with `signerd audit verify`.
    done = subprocess.run(
        [sys.executable, "-m", "signer.cli", "audit", "verify", "--config", str(a.config_path)],
        capture_output=True,
        text=True,
        env=dict(a.env, PYTHONPATH=f"{ROOT}:{ROOT / 'clients'}"),
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK:" in done.stdout, done.stdout
