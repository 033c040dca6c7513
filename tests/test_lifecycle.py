"""The daemon as an operator sees it: restarts, SIGTERM, several workers, the CLI, config."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from securesystemslib.signer import Signature

from harness import MODULE, Daemon, create_token, free_port, object_id_of, running_daemon
from signer.config import load_config, parse_pkcs11_uri
from signer.errors import ConfigError
from signer_client import ClientError, FailedPreconditionError, InvalidArgumentError
from signer_client.client import tuf_key


def verify(key, signature: bytes, data: bytes) -> None:
    tuf_key(key).verify_signature(Signature(key.key_id, signature.hex()), data)


def test_keys_survive_a_restart(tmp_path: Path) -> None:
    with running_daemon(tmp_path / "d") as daemon:
        key = daemon.client().create_key("persist", "ecdsa-sha2-nistp256", "root")
        daemon.stop()
        daemon.start()
        response = daemon.client().sign(key.key_id, b"after restart")
        verify(key, response.signature, b"after restart")
        assert daemon.client().get_key(key.key_id) == key


def test_sigterm_lets_in_flight_requests_finish(tmp_path: Path) -> None:
    with running_daemon(tmp_path / "d") as daemon:
        client = daemon.client()
        key = client.create_key("slow", "rsassa-pss-sha256", "targets")
        payloads = [b"slow-%d" % i for i in range(400)]  # ~1 s of RSA-3072 in the token
        result: dict[str, object] = {}

        def sign() -> None:
            try:
                result["batch"] = client.sign_batch(key.key_id, payloads)
            except Exception as exc:
                result["error"] = exc

        thread = threading.Thread(target=sign)
        thread.start()
        import time

        time.sleep(0.4)
        daemon.signal(signal.SIGTERM)
        thread.join(30)
        assert "error" not in result, result.get("error")
        batch = result["batch"]
        assert isinstance(batch, list) and len(batch) == 400 and all(r.ok for r in batch)
        verify(key, batch[-1].signature, payloads[-1])
        assert daemon.proc is not None and daemon.proc.wait(20) == 0
        assert "stopping: finishing in-flight requests" in daemon.log()


def test_oversized_payload_is_invalid_argument(tmp_path: Path) -> None:
    with running_daemon(tmp_path / "d", server_options="max_payload_bytes = 1024") as daemon:
        client = daemon.client()
        key = client.create_key("small", "ed25519", "targets")
        client.sign(key.key_id, b"x" * 1024)
        with pytest.raises(InvalidArgumentError, match="1025 bytes; the limit is 1024"):
            client.sign(key.key_id, b"x" * 1025)
        # Far beyond: gRPC's receive limit follows ours, so gRPC refuses it (test_transport.py).
        with pytest.raises(ClientError, match="RESOURCE_EXHAUSTED"):
            client.sign(key.key_id, b"x" * 2_000_000)


def test_workers_share_port_and_see_each_others_changes(tmp_path: Path) -> None:
    with running_daemon(tmp_path / "d", workers=2) as daemon:
        admin = daemon.client()
        key = admin.create_key("shared", "ecdsa-sha2-nistp256", "timestamp")
        clients = [daemon.client() for _ in range(8)]  # separate connections spread over workers
        for c in clients:
            verify(key, c.sign(key.key_id, b"w").signature, b"w")
        daemon.wait_log("worker 0 INFO")  # two processes, one port
        daemon.wait_log("worker 1 INFO")
        admin.retire_key(key.key_id)
        for c in clients:  # no worker keeps signing with a retired key
            with pytest.raises(FailedPreconditionError):
                c.sign(key.key_id, b"w")


def test_concurrent_signing_is_safe(daemon: Daemon) -> None:
    """Many threads at once on one token session: every signature verifies (no crash)."""
    client = daemon.client()
    keys = [
        client.create_key(f"conc-{a}", a, "targets")
        for a in ("ecdsa-sha2-nistp256", "ed25519", "ecdsa-sha2-nistp384")
    ]

    def work(i: int) -> None:
        key = keys[i % len(keys)]
        data = b"concurrent-%d" % i
        verify(key, client.sign(key.key_id, data).signature, data)

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(work, range(600)))


def test_check_reports_registry_and_token_disagreements(tmp_path: Path) -> None:
    with running_daemon(tmp_path / "d") as daemon:
        client = daemon.client()
        gone = client.create_key("gone", "ed25519", "targets")
        client.create_key("fine", "ed25519", "targets")
        daemon.stop()
        env = dict(os.environ, **daemon.env)
        check = [sys.executable, "-m", "signer.cli", "check", "--config", str(daemon.config_path)]
        clean = subprocess.run(check, env=env, capture_output=True, text=True)
        assert clean.returncode == 0, clean.stdout + clean.stderr
        assert "0 disagreement" in clean.stdout
        # Remove one key's objects behind the registry's back, add an unregistered key.
        script = f"""
import os, pkcs11
from pkcs11 import Attribute, KeyType
lib = pkcs11.lib({MODULE!r})
s = lib.get_token(token_label="tuf-signer").open(rw=True, user_pin=os.environ["SIGNER_PIN"])
for o in s.get_objects({{Attribute.ID: bytes.fromhex({object_id_of(daemon, gone.key_id)!r})}}):
    o.destroy()
s.generate_keypair(KeyType.RSA, 1024, store=True, label="stray", id=b"stray")
"""
        subprocess.run([sys.executable, "-c", script], env=env, check=True)
        dirty = subprocess.run(check, env=env, capture_output=True, text=True)
        assert dirty.returncode == 1
        assert f"key {gone.key_id}: private key object missing" in dirty.stdout
        assert "label 'stray'" in dirty.stdout and "not registered" in dirty.stdout
        daemon.start()
        daemon.wait_log("registry/token mismatch")  # also reported at start-up
        with pytest.raises(FailedPreconditionError, match="not on the token"):
            daemon.client().sign(gone.key_id, b"x")


def test_keys_cli_is_a_client_of_the_api(daemon: Daemon, tmp_path: Path) -> None:
    config = daemon.client_config("admin")
    client_toml = tmp_path / "client.toml"
    client_toml.write_text(
        f'address = "{config.address}"\nca = "{config.ca}"\ncert = "{config.cert}"\n'
        f'key = "{config.key}"\n'
    )

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "signer.cli",
                "keys",
                *args,
                "--client-config",
                str(client_toml),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )

    created = cli("create", "--label", "cli-key", "--algorithm", "ed25519", "--role", "snapshot")
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)
    assert key["scheme"] == "ed25519" and key["role"] == "snapshot"
    assert key["key_id"] in cli("list", "--role", "snapshot").stdout
    assert json.loads(cli("show", key["key_id"]).stdout)["label"] == "cli-key"
    assert json.loads(cli("retire", key["key_id"]).stdout)["state"] == "KEY_STATE_RETIRED"
    refused = cli("destroy", key["key_id"], "--confirm", "nope")
    assert refused.returncode == 2 and "must repeat the key_id" in refused.stderr
    assert (
        json.loads(cli("destroy", key["key_id"], "--confirm", key["key_id"]).stdout)["state"]
        == "KEY_STATE_DESTROYED"
    )
    missing = cli("show", "f" * 64)
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr


def test_config_never_holds_the_pin(tmp_path: Path) -> None:
    base = '[tls]\nca="ca"\ncert="c"\nkey="k"\n'
    (tmp_path / "a.toml").write_text(base + '[token]\nlabel="t"\npin="1234"\n')
    with pytest.raises(ConfigError, match="pin_env or pin_file"):
        load_config(tmp_path / "a.toml")
    (tmp_path / "b.toml").write_text(
        base + '[token]\nuri="pkcs11:token=my%20token;serial=42"\npin_env="NO_SUCH_PIN_VAR"\n'
    )
    config = load_config(tmp_path / "b.toml")
    assert config.token.label == "my token" and config.token.serial == "42"
    with pytest.raises(ConfigError, match="export NO_SUCH_PIN_VAR"):
        config.token.read_pin()
    (tmp_path / "pin").write_text("s3cret\n")
    (tmp_path / "pin").chmod(0o600)  # group/other-readable PIN files are refused
    (tmp_path / "c.toml").write_text(base + '[token]\nlabel="t"\npin_file="pin"\n')
    assert load_config(tmp_path / "c.toml").token.read_pin() == "s3cret"
    (tmp_path / "d.toml").write_text(base + "[token]\nmodule='/x.so'\n")
    with pytest.raises(ConfigError, match="name the token"):
        load_config(tmp_path / "d.toml")
    assert parse_pkcs11_uri("pkcs11:token=a;object=b?module-path=/m.so")["module-path"] == "/m.so"


def test_wrong_pin_keeps_daemon_up_but_not_serving(tmp_path: Path) -> None:
    env = create_token(tmp_path / "hsm")
    env["SIGNER_PIN"] = "wrong-pin"
    daemon = Daemon(root=tmp_path, port=free_port(), env=env)
    daemon.start(wait=False)
    try:
        daemon.wait_serving(timeout=20, want=2)
        assert "token 'tuf-signer' refused the PIN" in daemon.log()
        assert "wrong-pin" not in daemon.log()  # never log the PIN
    finally:
        daemon.stop()


def test_registry_is_sqlite(daemon: Daemon) -> None:
    key = daemon.client().create_key("sql", "ed25519", "targets", repository="r")
    with sqlite3.connect(daemon.state / "keys.db") as db:
        row = db.execute(
            "SELECT label, role, repository, state, algorithm_name FROM keys WHERE key_id = ?",
            (key.key_id,),
        ).fetchone()
    assert row == ("sql", "targets", "r", "active", "ed25519")
    assert len(object_id_of(daemon, key.key_id)) == 32


def test_key_changes_are_audited_before_they_happen(daemon: Daemon) -> None:
    """Fail closed for administration too: no audit entry, no create/retire/destroy."""
    from harness import read_token_objects
    from signer_client import UnavailableError

    client = daemon.client()
    key = client.create_key("guarded", "ed25519", "targets")
    labels_before = {o["label"] for o in read_token_objects(daemon)}
    blocker = sqlite3.connect(daemon.state / "audit.db", isolation_level=None)
    blocker.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'disk full'); END"
    )
    try:
        with pytest.raises(UnavailableError, match="audit log could not be written"):
            client.destroy_key(key.key_id, confirm=key.key_id)
        with pytest.raises(UnavailableError):
            client.retire_key(key.key_id)
        with pytest.raises(UnavailableError):
            client.create_key("unaudited", "ed25519", "targets")
    finally:
        blocker.execute("DROP TRIGGER refuse")
        blocker.close()
    assert client.get_key(key.key_id).state == 1  # still ACTIVE, still on the token
    assert any(o["id"] == object_id_of(daemon, key.key_id) for o in read_token_objects(daemon))
    assert {o["label"] for o in read_token_objects(daemon)} == labels_before  # nothing new kept
    verify(key, client.sign(key.key_id, b"still here").signature, b"still here")
