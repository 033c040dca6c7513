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

from harness import Daemon, pull_token, reinsert_token, running_daemon
from signer_client import UnavailableError
from signer_client.client import tuf_key

SERVING, NOT_SERVING = 1, 2


@pytest.fixture
def fragile(tmp_path: Path) -> Iterator[Daemon]:
    with running_daemon(tmp_path / "d") as daemon:
        yield daemon


def test_token_pulled_mid_service_then_healed(fragile: Daemon) -> None:
    client = fragile.client()
    key = client.create_key("fault", "ecdsa-sha2-nistp256", "timestamp")
    client.sign(key.key_id, b"before")

    away = pull_token(fragile)
    with pytest.raises(UnavailableError, match="unavailable"):
        client.sign(key.key_id, b"while pulled")
    fragile.wait_serving(timeout=10, want=NOT_SERVING)
    with pytest.raises(UnavailableError):  # fails fast while broken, no crash
        client.sign(key.key_id, b"still pulled")
    assert fragile.proc is not None and fragile.proc.poll() is None

    reinsert_token(away)
    fragile.wait_serving(timeout=20, want=SERVING)
    response = client.sign(key.key_id, b"after")
    tuf_key(key).verify_signature(Signature(key.key_id, response.signature.hex()), b"after")
    assert "is back" in fragile.log()


def test_idle_daemon_notices_pulled_token(fragile: Daemon) -> None:
    away = pull_token(fragile)
    fragile.wait_serving(timeout=10, want=NOT_SERVING)  # the liveness probe, no request needed
    reinsert_token(away)
    fragile.wait_serving(timeout=20, want=SERVING)


def test_retrying_client_rides_out_a_short_outage(fragile: Daemon) -> None:
    admin = fragile.client()
    key = admin.create_key("retry", "ed25519", "timestamp")
    patient = fragile.client(retries=10)
    away = pull_token(fragile)
    fragile.wait_serving(timeout=10, want=NOT_SERVING)
    import threading

    timer = threading.Timer(1.0, reinsert_token, args=(away,))
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
        away = pull_token(daemon)
        daemon.start(wait=False)
        daemon.wait_serving(timeout=20, want=NOT_SERVING)
        reinsert_token(away)
        daemon.wait_serving(timeout=20, want=SERVING)
        daemon.client().sign(key.key_id, b"hello")


def health_with_reason(daemon: Daemon) -> tuple[int, str]:
    """Health's status and the ``signer-health-reason`` it sent with it ("" if none)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with daemon.channel("admin") as channel:
        response, call = health_pb2_grpc.HealthStub(channel).Check.with_call(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    reasons = [v for k, v in call.trailing_metadata() or () if k == "signer-health-reason"]
    return int(response.status), str(reasons[0]) if reasons else ""


def test_token_back_with_another_pin_is_tried_once_then_heals_on_sighup(
    fragile: Daemon, tmp_path: Path
) -> None:
    """A token that comes back refusing our PIN is a fault (UNAVAILABLE), not a crash, and
    the PIN is tried exactly once: a real HSM locks the PIN after a few wrong tries. Health
    stays NOT_SERVING and says why until SIGHUP, which tries again."""
    import os
    import signal
    import subprocess

    from harness import ROOT

    refusal = f"signer.token: token {fragile.label!r} refused the PIN"
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
    away = pull_token(fragile)
    (impostor / "tokens").rename(away.with_name("tokens"))  # same label, other PIN
    with pytest.raises(UnavailableError, match="PIN"):  # re-opened once: login refused
        client.sign(key.key_id, b"during")
    fragile.wait_serving(timeout=10, want=NOT_SERVING)
    # The healer's backoff starts at 0.05 s: without the lockout, 3 s are ~7 more tries.
    time.sleep(3)
    assert fragile.log().count(refusal) == 1, fragile.log()
    with pytest.raises(UnavailableError, match="PIN"):  # still a clean UNAVAILABLE
        client.sign(key.key_id, b"during")
    assert fragile.log().count(refusal) == 1  # a request does not try the PIN either
    # The right token is back, but nobody tries the PIN until the operator says so.
    away.with_name("tokens").rename(impostor / "tokens")
    reinsert_token(away)
    time.sleep(1.5)
    assert fragile.health() == NOT_SERVING
    # Health says why, in its trailing metadata, for as long as it lasts.
    status, reason = health_with_reason(fragile)
    assert status == NOT_SERVING and "refused the PIN" in reason and "SIGHUP" in reason, reason
    assert fragile.proc is not None and fragile.proc.poll() is None
    fragile.signal(signal.SIGHUP)
    fragile.wait_serving(timeout=20, want=SERVING)
    assert health_with_reason(fragile) == (SERVING, "")  # no reason once serving
    response = client.sign(key.key_id, b"after")
    tuf_key(key).verify_signature(Signature(key.key_id, response.signature.hex()), b"after")
    assert fragile.log().count(refusal) == 1


_PIN_ONCE = r"""
import sys, time
from signer.errors import TokenUnavailable
from signer.token import Token, TokenSettings
module, label, pin = sys.argv[1:4]
token = Token(TokenSettings(module, label, "wrong-pin", probe_interval=0, max_backoff=0.05))
try:
    token.open()
    raise SystemExit("logged in with a wrong PIN")
except TokenUnavailable as exc:
    assert "refused the PIN" in str(exc), exc
token._mark_broken(TokenUnavailable(str(token.pin_refused)))  # as the server does
time.sleep(0.5)  # ten heal intervals
assert token.login_attempts == 1, token.login_attempts
assert not token.healthy and "PIN" in str(token.fault), token.fault
token.reset_lockout(lambda: "still-wrong")
time.sleep(0.5)
assert token.login_attempts == 2 and "PIN" in str(token.fault), token.login_attempts
token.reset_lockout(lambda: pin)
deadline = time.monotonic() + 5
while not token.healthy and time.monotonic() < deadline:
    time.sleep(0.02)
assert token.healthy and token.login_attempts == 3, (token.fault, token.login_attempts)
token.close()
print("ok")
"""


def test_refused_pin_is_tried_once_by_the_token_until_reset(tmp_path: Path) -> None:
    """The token object itself (in a process of its own), short heal intervals: one login
    attempt, then none until ``reset_lockout`` (what SIGHUP calls) gives a PIN to try."""
    import os
    import subprocess
    import sys

    from harness import MODULE, PIN, create_token

    env = create_token(tmp_path / "hsm", "pin-token")
    result = subprocess.run(
        [sys.executable, "-c", _PIN_ONCE, MODULE, "pin-token", PIN],
        env=dict(os.environ, **env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
