"""The client library: config, mTLS channel, error mapping, retries, against a real daemon."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from securesystemslib.signer import Signature

from harness import Daemon, free_port
from signer_client import (
    ClientConfig,
    ClientError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    SignerClient,
    UnavailableError,
)
from signer_client.client import tuf_key

PAYLOAD = b"raw bytes, not TUF metadata: no payload rules apply"


def test_config_from_file_resolves_relative_paths(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "client.toml"
    path.parent.mkdir()
    path.write_text(
        'address = "signer.example:7443"\nca = "pki/ca.pem"\ncert = "/abs/c.pem"\n'
        'key = "k.pem"\ntimeout = 2.5\nretries = 1\nserver_name = "signer"\n'
    )
    config = ClientConfig.from_file(path)
    assert config.address == "signer.example:7443"
    assert config.ca == path.parent.resolve() / "pki" / "ca.pem"
    assert config.cert == Path("/abs/c.pem")
    assert config.key == path.parent.resolve() / "k.pem"
    assert (config.timeout, config.retries, config.server_name) == (2.5, 1, "signer")


def test_config_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SIGNER_CLIENT_CONFIG", raising=False)
    for name in ("SIGNER_ADDRESS", "SIGNER_CA", "SIGNER_CERT", "SIGNER_KEY"):
        monkeypatch.setenv(name, f"/x/{name.lower()}")
    config = ClientConfig.from_env()
    assert config.address == "/x/signer_address" and config.key == Path("/x/signer_key")
    assert ClientConfig.from_env("h:1").address == "h:1"
    monkeypatch.delenv("SIGNER_CERT")
    with pytest.raises(ValueError, match="SIGNER_CERT"):
        ClientConfig.from_env()
    path = tmp_path / "c.toml"
    path.write_text('address = "a:1"\nca = "ca"\ncert = "c"\nkey = "k"\n')
    monkeypatch.setenv("SIGNER_CLIENT_CONFIG", str(path))
    assert ClientConfig.from_env().address == "a:1"
    assert ClientConfig.from_env("b:2").address == "b:2"


def test_keys_and_signatures_verify(daemon: Daemon) -> None:
    with daemon.client() as client:
        for algorithm in ("ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ed25519"):
            key = client.create_key(f"lib-{algorithm}", algorithm, role="targets", repository="lib")
            assert client.get_key(key.key_id).key_id == key.key_id
            public = tuf_key(key)
            assert public.keyid == key.key_id and public.scheme == algorithm
            response = client.sign(key.key_id, PAYLOAD)
            public.verify_signature(Signature(key.key_id, response.signature.hex()), PAYLOAD)
        listed = client.list_keys(repository="lib")
        assert len(listed) == 3 and {k.role for k in listed} == {"targets"}
        assert client.list_keys(repository="lib", role="root") == []


def test_batches(daemon: Daemon) -> None:
    with daemon.client() as client:
        a = client.create_key("batch-a", "ed25519", role="snapshot")
        b = client.create_key("batch-b", role="timestamp")
        results = client.sign_batch(a.key_id, [b"one", b"two"])
        assert [r.ok for r in results] == [True, True]
        mixed = client.sign_batch_items([(a.key_id, b"x"), ("0" * 64, b"y"), (b.key_id, b"z")])
        assert [r.key_id for r in mixed] == [a.key_id, "0" * 64, b.key_id]
        assert isinstance(mixed[1].error, NotFoundError)
        for result, payload, key in ((mixed[0], b"x", a), (mixed[2], b"z", b)):
            sig = Signature(key.key_id, result.signature.hex())
            tuf_key(key).verify_signature(sig, payload)


def test_statuses_become_exceptions(daemon: Daemon) -> None:
    with daemon.client() as client:
        with pytest.raises(NotFoundError) as info:
            client.get_key("0" * 64)
        assert info.value.code is grpc.StatusCode.NOT_FOUND
        assert str(info.value).startswith("NOT_FOUND: ")
        with pytest.raises(InvalidArgumentError, match="unknown algorithm"):
            client.create_key("x", "dsa")
        key = client.create_key("to-retire", role="targets")
        with pytest.raises(InvalidArgumentError):
            client.sign(key.key_id, b"")
        client.retire_key(key.key_id)
        with pytest.raises(FailedPreconditionError):
            client.sign(key.key_id, PAYLOAD)
        with pytest.raises(ClientError):  # every error shares one root
            client.destroy_key(key.key_id, confirm="not the key id")


def test_tuf_key_checks_the_key_id(daemon: Daemon) -> None:
    with daemon.client() as client:
        key = client.create_key("keyid-check", "ed25519", role="targets")
    data = json.loads(key.tuf_key_json, strict=False)
    assert hashlib.sha256(key.tuf_key_json.encode()).hexdigest() == key.key_id
    data["keyval"]["public"] = "00" * 32
    key.tuf_key_json = json.dumps(data)
    with pytest.raises(ClientError, match="does not match"):
        tuf_key(key)


def test_unavailable_is_retried_with_backoff(daemon: Daemon) -> None:
    """Nothing listens on the port: UNAVAILABLE, retried `retries` times, then raised."""
    config = daemon.client_config(address=f"127.0.0.1:{free_port()}", retries=3, timeout=2)
    with SignerClient(config) as client:
        start = time.monotonic()
        with pytest.raises(UnavailableError):
            client.get_key("0" * 64)
        elapsed = time.monotonic() - start
    # three sleeps of at least 0.05, 0.1 and 0.2 s (jittered backoff)
    assert elapsed >= 0.35


class _Unavailable(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "token healing"


def test_retry_policy_counts(daemon: Daemon) -> None:
    """Idempotent calls retry; creating keys never does behind the caller's back."""
    calls: list[Any] = []

    def flaky(request: Any, timeout: float) -> str:
        calls.append(timeout)
        if len(calls) < 3:
            raise _Unavailable()
        return "ok"

    with daemon.client(retries=4, timeout=7.0) as client:
        assert client._call(flaky, None) == "ok"
        assert calls == [7.0, 7.0, 7.0]  # the deadline goes with every attempt
        calls.clear()
        with pytest.raises(UnavailableError, match="token healing"):
            client._call(flaky, None, retry=False)
        assert len(calls) == 1
