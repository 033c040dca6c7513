"""Break the token under a running daemon: UNAVAILABLE while it is gone, healed without restart.

SoftHSM keeps its token in a directory; moving that directory away is what a pulled
device looks like to the daemon (stale handles, the token no longer found).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from securesystemslib.signer import Signature

from harness import Daemon, running_daemon
from signer_client import UnavailableError
from signer_client.client import tuf_key

SERVING, NOT_SERVING = 1, 2


@pytest.fixture
def fragile(tmp_path: Path) -> Iterator[Daemon]:
    with running_daemon(tmp_path / "d") as daemon:
        yield daemon


def _pull(daemon: Daemon) -> Path:
    tokens = Path(daemon.env["SOFTHSM2_CONF"]).parent / "tokens"
    away = tokens.with_name("tokens.pulled")
    tokens.rename(away)
    return away


def _reinsert(away: Path) -> None:
    away.rename(away.with_name("tokens"))


def test_token_pulled_mid_service_then_healed(fragile: Daemon) -> None:
    client = fragile.client()
    key = client.create_key("fault", "ecdsa-sha2-nistp256", "timestamp")
    client.sign(key.key_id, b"before")

    away = _pull(fragile)
    with pytest.raises(UnavailableError, match="unavailable"):
        client.sign(key.key_id, b"while pulled")
    fragile.wait_serving(timeout=10, want=NOT_SERVING)
    with pytest.raises(UnavailableError):  # fails fast while broken, no crash
        client.sign(key.key_id, b"still pulled")
    assert fragile.proc is not None and fragile.proc.poll() is None

    _reinsert(away)
    fragile.wait_serving(timeout=20, want=SERVING)
    response = client.sign(key.key_id, b"after")
    tuf_key(key).verify_signature(Signature(key.key_id, response.signature.hex()), b"after")
    assert "is back" in fragile.log()


def test_idle_daemon_notices_pulled_token(fragile: Daemon) -> None:
    away = _pull(fragile)
    fragile.wait_serving(timeout=10, want=NOT_SERVING)  # the liveness probe, no request needed
    _reinsert(away)
    fragile.wait_serving(timeout=20, want=SERVING)


def test_retrying_client_rides_out_a_short_outage(fragile: Daemon) -> None:
    admin = fragile.client()
    key = admin.create_key("retry", "ed25519", "timestamp")
    patient = fragile.client(retries=10)
    away = _pull(fragile)
    fragile.wait_serving(timeout=10, want=NOT_SERVING)
    import threading

    timer = threading.Timer(1.0, _reinsert, args=(away,))
    timer.start()
    started = time.monotonic()
    response = patient.sign(key.key_id, b"patience")
    timer.join()
    assert time.monotonic() - started >= 0.5  # it had to wait for the token
    tuf_key(key).verify_signature(Signature(key.key_id, response.signature.hex()), b"patience")


def test_daemon_starts_without_token_and_serves_once_it_appears(tmp_path: Path) -> None:
    with running_daemon(tmp_path / "d") as daemon:
        key = daemon.client().create_key("late", "ed25519", "timestamp")
        daemon.stop()
        away = _pull(daemon)
        daemon.start(wait=False)
        daemon.wait_serving(timeout=20, want=NOT_SERVING)
        _reinsert(away)
        daemon.wait_serving(timeout=20, want=SERVING)
        daemon.client().sign(key.key_id, b"hello")


def test_token_back_with_another_pin_stays_unavailable_then_heals(
    fragile: Daemon, tmp_path: Path
) -> None:
    """A token that comes back refusing our PIN is a fault (UNAVAILABLE), not a crash."""
    import os
    import subprocess

    from harness import ROOT

    client = fragile.client()
    key = client.create_key("pin", "ecdsa-sha2-nistp256", "timestamp")
    client.sign(key.key_id, b"before")
    impostor = tmp_path / "impostor"
    env = dict(os.environ, SIGNER_PIN="another-pin-9", SIGNER_SO_PIN="another-so-pin")
    subprocess.run(
        [str(ROOT / "softhsm" / "create-token.sh"), str(impostor), fragile.label],
        check=True,
        env=env,
        capture_output=True,
    )
    away = _pull(fragile)
    (impostor / "tokens").rename(away.with_name("tokens"))  # same label, other PIN
    with pytest.raises(UnavailableError):
        client.sign(key.key_id, b"during")
    fragile.wait_serving(timeout=10, want=NOT_SERVING)
    with pytest.raises(UnavailableError):  # still a clean UNAVAILABLE, never INTERNAL
        client.sign(key.key_id, b"during")
    away.with_name("tokens").rename(impostor / "tokens")
    _reinsert(away)
    fragile.wait_serving(timeout=20, want=SERVING)
    response = client.sign(key.key_id, b"after")
    tuf_key(key).verify_signature(Signature(key.key_id, response.signature.hex()), b"after")
