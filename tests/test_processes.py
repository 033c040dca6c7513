"""The supervisor and its workers: they die with it, keep the last good policy across a
restart, stop cleanly whatever state the workers are in, and exit with telling codes."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from harness import (
    Daemon,
    create_token,
    free_port,
    proc_stat,
    running_daemon,
    workers_of,
)
from signer_client import ClientError, PermissionDeniedError

POLICY = """
[[rules]]
principals = ["admin"]
operations = ["create", "read", "retire", "destroy"]

[[rules]]
principals = ["alice"]
operations = ["sign", "sign-raw", "read"]
keys = { roles = ["targets"] }
"""


def wait_for(condition: Callable[[], bool], timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout}s: {what}")
        time.sleep(0.1)


def running(pid: int) -> bool:
    fields = proc_stat(pid)
    return fields is not None and fields[0] != "Z"


def replaced(supervisor: int, victim: int) -> Callable[[], bool]:
    """True once ``victim`` is gone and the supervisor runs two workers again."""

    def check() -> bool:
        workers = workers_of(supervisor)
        return len(workers) == 2 and victim not in workers

    return check


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_workers_exit_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    with running_daemon(tmp_path / "d", workers=2) as daemon:
        assert daemon.proc is not None
        supervisor = daemon.proc.pid
        wait_for(lambda: len(workers_of(supervisor)) == 2, what="two workers")
        workers = workers_of(supervisor)
        daemon.proc.kill()  # SIGKILL: no chance to stop anything
        daemon.proc.wait()
        wait_for(lambda: not any(running(w) for w in workers), 8, "workers gone")
        wait_for(lambda: port_is_free(daemon.port), 5, "port free")
        # A new daemon on the port is then the only one serving.
        daemon.start()
        assert daemon.client().list_keys() == []


def test_restarted_worker_keeps_the_last_good_policy(tmp_path: Path) -> None:
    with running_daemon(
        tmp_path / "d", workers=2, policy=POLICY, clients=["admin", "alice", "bob"]
    ) as daemon:
        assert daemon.proc is not None
        key = daemon.client("admin").create_key("t", "ed25519", "targets")
        kept = daemon.state / "policy.last-good.toml"
        assert kept.read_text() == POLICY and kept.stat().st_mode & 0o777 == 0o600
        (daemon.root / "policy.toml").write_text("[[rules]\nthis is not TOML")
        daemon.signal(signal.SIGHUP)
        daemon.wait_log("workers keep the last good policy")
        assert kept.read_text() == POLICY
        # Both workers killed, one after the other: every later call is served by a worker
        # started while the file on disk is broken.
        supervisor = daemon.proc.pid
        for victim in workers_of(supervisor):
            os.kill(victim, signal.SIGKILL)
            wait_for(replaced(supervisor, victim), what=f"worker {victim} restarted")
        wait_for(
            lambda: daemon.log().count("enforcing the last good policy") >= 2,
            30,
            "restarted workers on the last good policy",
        )
        daemon.wait_serving()
        for _ in range(6):  # new connections, spread over both workers
            assert daemon.client("alice").sign(key.key_id, b"allowed").signature
            with pytest.raises(PermissionDeniedError):
                daemon.client("bob").sign(key.key_id, b"denied")
        assert daemon.proc.poll() is None


def test_stop_survives_workers_that_already_exited(tmp_path: Path) -> None:
    """SIGTERM twice while one worker has exited and another hangs: no crash, the hung
    worker is killed after the grace period, exit status 0."""
    with running_daemon(tmp_path / "d", workers=2) as daemon:
        assert daemon.proc is not None
        supervisor = daemon.proc.pid
        wait_for(lambda: len(workers_of(supervisor)) == 2, what="two workers")
        quick, hung = workers_of(supervisor)
        os.kill(hung, signal.SIGSTOP)  # will not act on SIGTERM
        try:
            daemon.signal(signal.SIGTERM)
            wait_for(lambda: not running(quick), what="the other worker stopped")
            time.sleep(0.5)  # the supervisor has reaped it
            for _ in range(3):
                daemon.signal(signal.SIGTERM)
                time.sleep(0.2)
            assert daemon.proc.wait(30) == 0, daemon.log()
        finally:
            if running(hung):
                os.kill(hung, signal.SIGCONT)
        assert not running(hung)
        assert "No such process" not in daemon.log()
        assert "Traceback" not in daemon.log()


def _daemon(tmp_path: Path, **kwargs: object) -> Daemon:
    env = create_token(tmp_path / "hsm")
    return Daemon(root=tmp_path, port=free_port(), env=env, **kwargs)  # type: ignore[arg-type]


def test_configuration_error_exits_2(tmp_path: Path) -> None:
    daemon = _daemon(tmp_path / "a", workers=2)
    daemon.write_config()
    (daemon.pki / "server-key.pem").unlink()  # the workers cannot load TLS material
    daemon.start(wait=False)
    assert daemon.proc is not None and daemon.proc.wait(30) == 2, daemon.log()
    assert "cannot read TLS material" in daemon.log()
    assert "No such process" not in daemon.log()  # 2 for the configuration, not a crash
    assert port_is_free(daemon.port)

    broken = _daemon(tmp_path / "b", workers=2, policy="[[rules]\n")  # a broken policy
    broken.start(wait=False)
    assert broken.proc is not None and broken.proc.wait(30) == 2, broken.log()
    assert "not valid TOML" in broken.log()

    # Bytes that are not UTF-8 (TOML's encoding): the same exit 2 and one line, no
    # traceback, with one worker and with a supervisor.
    for workers in (1, 2):
        odd = _daemon(
            tmp_path / f"c{workers}", workers=workers, policy=b'[[rules]]\nprincipals = ["\xff"]\n'
        )
        odd.start(wait=False)
        assert odd.proc is not None and odd.proc.wait(30) == 2, odd.log()
        assert "policy.toml: not UTF-8 text" in odd.log() and "Traceback" not in odd.log()


def test_supervisor_failure_exits_1_and_leaves_no_worker(tmp_path: Path) -> None:
    daemon = _daemon(tmp_path, workers=2, policy=POLICY)
    daemon.state.mkdir(mode=0o700)
    (daemon.state / "policy.last-good.toml").mkdir()  # the supervisor cannot keep it
    daemon.start(wait=False)
    assert daemon.proc is not None and daemon.proc.wait(30) == 1, daemon.log()
    assert "supervisor failed" in daemon.log()
    assert workers_of(daemon.proc.pid) == [] and port_is_free(daemon.port)


def test_log_level_in_any_case(tmp_path: Path) -> None:
    daemon = _daemon(tmp_path, workers=2)
    daemon.env["SIGNER_LOG_LEVEL"] = "info"
    daemon.start()
    try:
        key = daemon.client().create_key("l", "ed25519", "targets")
        assert daemon.client().sign(key.key_id, b"x").signature
        daemon.wait_log("worker 1 INFO")
    finally:
        assert daemon.stop() == 0


def test_signals_to_a_stopping_daemon_are_harmless(tmp_path: Path) -> None:
    """SIGHUP right after SIGTERM (a worker may already be gone): clean exit 0."""
    with running_daemon(tmp_path / "d", workers=2) as daemon:
        assert daemon.proc is not None
        daemon.signal(signal.SIGTERM)
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGHUP):
            time.sleep(0.1)
            try:
                daemon.signal(sig)
            except ProcessLookupError:
                break
        assert daemon.proc.wait(30) == 0, daemon.log()
        assert "Traceback" not in daemon.log()
    with pytest.raises(ClientError):
        daemon.client(timeout=2).list_keys()
