"""A token call that hangs is noticed: health NOT_SERVING while it runs, a fresh session
after it returns. A real SoftHSM token; the 'hung' call is a slow function run under the
token's own lock, exactly where a stuck C_Sign would sit."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import MODULE, PIN, ROOT, create_token

_HANG = r"""
import sys, threading, time
from signer.algorithms import get_algorithm
from signer.token import Token, TokenSettings
module, label, pin = sys.argv[1:4]
token = Token(TokenSettings(module, label, pin, probe_interval=0, hang_seconds=0.3))
changes = []
token.on_health_change(changes.append)
token.open()
alg = get_algorithm("ecdsa-sha2-nistp256")
object_id, _ = token.generate(alg, "watchdog")
assert token.healthy
worker = threading.Thread(target=lambda: token._call(lambda: time.sleep(1.2)))
worker.start()
time.sleep(0.9)
assert not token.healthy and "hung" in str(token.fault), token.fault
worker.join()
deadline = time.monotonic() + 5
while not token.healthy and time.monotonic() < deadline:
    time.sleep(0.02)
assert token.healthy, token.fault
assert changes[-2:] == [False, True], changes
signature = token.sign(object_id, alg, alg.to_be_signed(b"after"))  # a fresh session signs
assert len(signature) == 64
token.close()
print("ok")
"""


def test_a_hung_token_call_is_flagged_and_the_session_reopened(tmp_path: Path) -> None:
    env = create_token(tmp_path / "hsm", "hang-token")
    result = subprocess.run(
        [sys.executable, "-c", _HANG, MODULE, "hang-token", PIN],
        env=dict(os.environ, **env, PYTHONPATH=f"{ROOT}:{ROOT / 'clients'}"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def _hanging_module(directory: Path) -> Path:
    """Build tests/hang_module.c: SoftHSM2 whose C_Sign waits while a file exists."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    assert gcc, "a C compiler is needed to build the hanging PKCS#11 module (make deps)"
    out = directory / "hang.so"
    subprocess.run(
        [gcc, "-shared", "-fPIC", "-O2", "-I/usr/include/p11-kit-1",
         "-o", str(out), str(ROOT / "tests" / "hang_module.c"), "-ldl"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return out


def test_a_hung_token_in_the_daemon_is_seen_and_healed(tmp_path: Path) -> None:
    """The daemon's view of a stuck C_Sign (a real module that hangs, no mock): the loop
    waits with it, so health checks time out (what an orchestrator acts on); the watchdog
    logs it and marks the token broken; once the call returns, health says NOT_SERVING
    with the reason, the session is reopened and signing goes on."""
    import threading

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from securesystemslib.signer import Signature

    from harness import Daemon, free_port
    from signer_client.client import tuf_key

    hang = tmp_path / "hang-now"
    env = create_token(tmp_path / "hsm", "tuf-signer")
    env.update(SHIM_REAL_MODULE=MODULE, SHIM_HANG_FILE=str(hang))
    daemon = Daemon(
        root=tmp_path / "d",
        port=free_port(),
        env=env,
        module=str(_hanging_module(tmp_path)),
        token_options="hang_seconds = 1.0",
    )
    (tmp_path / "d").mkdir()
    daemon.start()
    try:
        client = daemon.client(timeout=30)
        key = client.create_key("stuck", "ecdsa-sha2-nistp256", "timestamp")
        client.sign(key.key_id, b"before")
        hang.touch()
        outcome: list[object] = []

        def stuck_sign() -> None:
            try:
                outcome.append(daemon.client(timeout=30).sign(key.key_id, b"stuck"))
            except Exception as exc:
                outcome.append(exc)

        caller = threading.Thread(target=stuck_sign)
        caller.start()
        daemon.wait_log("the token is hung", timeout=10)
        with daemon.channel("admin") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            with pytest.raises(grpc.RpcError) as info:  # the loop waits with the token
                stub.Check(health_pb2.HealthCheckRequest(), timeout=0.5)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            hang.unlink()
            caller.join(timeout=30)
            assert len(outcome) == 1  # the stuck call was answered, one way or the other
            deadline = time.monotonic() + 20
            statuses = set()
            while time.monotonic() < deadline:
                response, call = stub.Check.with_call(health_pb2.HealthCheckRequest(), timeout=5)
                statuses.add(response.status)
                if response.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                    reasons = dict(call.trailing_metadata() or ())
                    assert "hung" in reasons.get("signer-health-reason", ""), reasons
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    break
                time.sleep(0.02)
            assert response.status == health_pb2.HealthCheckResponse.SERVING, statuses
        signed = client.sign(key.key_id, b"after")  # a reopened session signs
        tuf_key(key).verify_signature(Signature(key.key_id, signed.signature.hex()), b"after")
        log = daemon.log()
        hung, healing, back = (
            log.index(text)
            for text in ("the token is hung", "a token call hung; healing", "is back")
        )
        assert hung < healing < back, log  # flagged while stuck, reopened after it returned
        assert daemon.proc is not None and daemon.proc.poll() is None
    finally:
        hang.unlink(missing_ok=True)
        daemon.stop()
