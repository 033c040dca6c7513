"""``[server] pin_workers``: each worker, every thread of it, on one CPU of its own.

A real daemon with two workers; the CPUs each worker's threads may run on are read back
from /proc, and signatures made through fresh connections (both workers) are verified.
Without the setting, the workers keep the CPUs the daemon was started with.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from harness import Daemon, child_pids, create_token, free_port

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="CPU affinity is read from Linux's /proc"
)


def allowed_cpus(pid: int) -> dict[int, set[int]]:
    """Thread id -> the CPUs it may run on (``Cpus_allowed_list``)."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
        except OSError:  # a thread that has just ended
            continue
        line = next(x for x in status.splitlines() if x.startswith("Cpus_allowed_list:"))
        cpus: set[int] = set()
        for part in line.split(":", 1)[1].strip().split(","):
            low, _, high = part.partition("-")
            cpus.update(range(int(low), int(high or low) + 1))
        found[int(task.name)] = cpus
    return found


@pytest.fixture(scope="module", params=[True, False], ids=["pinned", "default"])
def daemon(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("pin")
    options = "pin_workers = true" if request.param else ""
    running = Daemon(
        root=root,
        port=free_port(),
        env=create_token(root / "hsm"),
        workers=2,
        server_options=options,
    )
    running.start()
    try:
        yield running
    finally:
        running.stop()


def test_workers_run_where_the_setting_says_and_sign(daemon: Daemon) -> None:
    assert daemon.proc is not None
    ours = sorted(os.sched_getaffinity(0))  # what the daemon was started with
    key = daemon.client().create_key("pinned", "ecdsa-sha2-nistp256", "targets")
    public = serialization.load_pem_public_key(key.public_key_pem.encode())
    assert isinstance(public, ec.EllipticCurvePublicKey)
    for n in range(8):  # fresh connections: both workers sign
        payload = b"pinned %d" % n
        client = daemon.fresh_client()
        public.verify(
            client.sign(key.key_id, payload).signature, payload, ec.ECDSA(hashes.SHA256())
        )
        client.close()

    workers = child_pids(daemon.proc.pid)
    assert len(workers) == 2
    threads = {pid: allowed_cpus(pid) for pid in workers}
    assert all(len(t) > 3 for t in threads.values())  # the loop, the audit writer, gRPC's...
    pinned = "pin_workers = true" in daemon.server_options
    for pid, by_thread in threads.items():
        masks = {frozenset(cpus) for cpus in by_thread.values()}
        if pinned:
            assert len(masks) == 1 and len(next(iter(masks))) == 1, (pid, by_thread)
        else:
            assert masks == {frozenset(ours)}, (pid, by_thread)
    if pinned:  # worker i on the i-th allowed CPU, round robin: distinct where there are two
        used = sorted(next(iter(t.values())).pop() for t in threads.values())
        assert used == sorted(ours[i % len(ours)] for i in range(2))
    assert daemon.proc.poll() is None
