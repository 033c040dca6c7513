"""A token call that hangs is noticed: health NOT_SERVING while it runs, a fresh session
after it returns. A real SoftHSM token; the 'hung' call is a slow function run under the
token's own lock, exactly where a stuck C_Sign would sit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
