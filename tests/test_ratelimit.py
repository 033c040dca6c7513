"""Rate limits hold per host: the token buckets are shared by the worker processes.

The store is a real SQLite file (``ratelimit.db`` in the state dir); the daemon test runs
two real worker processes behind one port and opens a fresh TLS connection per call.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from certs_helpers import ClientCert, make_client_cert

from harness import Daemon, child_pids, running_daemon
from signer.errors import ResourceExhausted
from signer.policy.file import FilePolicy
from signer.principal import Principal
from signer.storage.buckets import MemoryBuckets
from signer.storage.sqlite.buckets import SqliteBuckets
from signer_client import ClientError, SignerClient

CI = Principal("ci", "cn", "0" * 64)

# -- the store ----------------------------------------------------------------------------


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_two_stores_on_one_file_share_each_bucket(tmp_path: Path) -> None:
    """Two connections (as two workers have) drain one bucket, not one each."""
    clock = Clock()
    a = SqliteBuckets(tmp_path / "ratelimit.db", clock)
    b = SqliteBuckets(tmp_path / "ratelimit.db", clock)
    try:
        assert a.take("ci", 2.0, 3, 2) == 0.0
        assert b.take("ci", 2.0, 3, 1) == 0.0
        assert a.take("ci", 2.0, 3, 1) == pytest.approx(0.5)  # empty: wait for 1 at 2/s
        assert b.take("ci", 2.0, 3, 1) == pytest.approx(0.5)
        assert b.take("other", 2.0, 3, 3) == 0.0  # each principal has its own bucket
        clock.now += 0.5
        assert b.take("ci", 2.0, 3, 1) == 0.0  # refilled by one
        assert a.take("ci", 2.0, 3, 1) > 0
        clock.now += 100
        assert a.take("ci", 2.0, 3, 4) == pytest.approx(0.5)  # never above the burst
    finally:
        a.close()
        b.close()


def test_levels_survive_a_restart_and_a_clock_stepping_back(tmp_path: Path) -> None:
    clock = Clock()
    store = SqliteBuckets(tmp_path / "ratelimit.db", clock)
    assert store.take("ci", 1.0, 2, 2) == 0.0
    store.close()
    clock.now -= 3600  # the wall clock was set back an hour: that refills nothing
    store = SqliteBuckets(tmp_path / "ratelimit.db", clock)
    try:
        assert store.take("ci", 1.0, 2, 1) == pytest.approx(1.0)
        clock.now += 3600 + 1
        assert store.take("ci", 1.0, 2, 1) == 0.0
    finally:
        store.close()


def test_a_changed_limit_keeps_the_level(tmp_path: Path) -> None:
    """A reload (or two workers briefly on different policies) refills no bucket."""
    clock = Clock()
    store = SqliteBuckets(tmp_path / "ratelimit.db", clock)
    try:
        assert store.take("ci", 1.0, 5, 5) == 0.0
        assert store.take("ci", 10.0, 50, 1) == pytest.approx(0.1)  # a bigger limit: still empty
        clock.now += 10
        assert store.take("ci", 1.0, 2, 2) == 0.0  # capped at the (smaller) burst
        assert store.take("ci", 1.0, 2, 1) > 0
    finally:
        store.close()


def _drain(path: str, seconds: float, ready: Any, out: Any) -> None:
    store = SqliteBuckets(Path(path))
    ready.wait(60)  # both processes are up (a spawn can take seconds on a loaded machine)
    until = time.time() + seconds
    taken = 0
    while time.time() < until:
        if store.take("ci", 50.0, 20, 1) == 0.0:
            taken += 1
    store.close()
    out.put(taken)


def test_two_processes_get_the_rate_once(tmp_path: Path) -> None:
    """Two processes hammering one bucket get burst + rate x time between them."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    ready = ctx.Barrier(2)
    seconds = 1.0
    procs = [
        ctx.Process(target=_drain, args=(str(tmp_path / "ratelimit.db"), seconds, ready, out))
        for _ in range(2)
    ]
    SqliteBuckets(tmp_path / "ratelimit.db").close()  # the schema, before the race
    for p in procs:
        p.start()
    taken = [out.get(timeout=90) for _ in procs]
    for p in procs:
        p.join(10)
    # The two windows start within moments of each other: allow 0.2 s of skew.
    assert sum(taken) <= 20 + 50 * (seconds + 0.2) * 1.1, taken
    assert min(taken) > 0, taken  # both took part


def test_policy_built_with_a_store(tmp_path: Path) -> None:
    """FilePolicy.parse/load(..., buckets=store): the limiter keeps its levels there."""
    text = "[rate_limits]\nci = { rate = 0.5, burst = 2 }\n"
    store = SqliteBuckets(tmp_path / "ratelimit.db")
    try:
        first = FilePolicy.parse(text, "p.toml", buckets=store)
        first.rate_limiter.take(CI, 2)
        (tmp_path / "p.toml").write_text(text)
        reloaded = FilePolicy.load(tmp_path / "p.toml", buckets=store)  # SIGHUP
        assert reloaded.rate_limiter.buckets is store
        with pytest.raises(ResourceExhausted, match=r"ci: 0.5/s, burst 2; retry in [12]\.\d\ds"):
            reloaded.rate_limiter.take(CI)
    finally:
        store.close()
    # Without a store: memory, and adopt() carries the levels over to a reloaded policy.
    old = FilePolicy.parse(text)
    old.rate_limiter.take(CI, 2)
    new = FilePolicy.parse(text)
    assert isinstance(new.rate_limiter.buckets, MemoryBuckets)
    new.rate_limiter.adopt(old.rate_limiter)
    with pytest.raises(ResourceExhausted, match="retry in"):
        new.rate_limiter.take(CI)


def test_workers_share_a_bucket_per_source_and_name(tmp_path: Path) -> None:
    """Two workers' policies on one store: the CN ``ci`` spends one bucket wherever it
    calls, and that bucket is not the DNS SAN ``ci``'s."""
    text = (
        '[rate_limits]\nci = { rate = 0.001, burst = 2 }\n"dns:ci" = { rate = 0.001, burst = 1 }\n'
    )
    a = SqliteBuckets(tmp_path / "ratelimit.db")
    b = SqliteBuckets(tmp_path / "ratelimit.db")
    try:
        one, two = FilePolicy.parse(text, buckets=a), FilePolicy.parse(text, buckets=b)
        one.rate_limiter.take(CI)
        two.rate_limiter.take(CI)
        with pytest.raises(ResourceExhausted, match="burst 2"):
            one.rate_limiter.take(CI)  # shared: two taken of two
        dns_ci = Principal("ci", "dns", "1" * 64)
        two.rate_limiter.take(dns_ci)  # a bucket of its own, with the dns: limit
        with pytest.raises(ResourceExhausted, match="burst 1"):
            one.rate_limiter.take(dns_ci)
    finally:
        a.close()
        b.close()


def test_cost_per_take(tmp_path: Path) -> None:
    """The shared store costs tens of microseconds per take (figures in the report)."""
    store = SqliteBuckets(tmp_path / "ratelimit.db")
    try:
        n = 2000
        t = time.perf_counter()
        for _ in range(n):
            store.take("ci", 1e9, 1e12, 1)
        per_take = (time.perf_counter() - t) / n
    finally:
        store.close()
    assert per_take < 0.001, f"{per_take * 1e6:.0f} us per take"


# -- the daemon: two workers, one limit -----------------------------------------------------

RATE, BURST = 5.0, 10
POLICY = f"""
[[rules]]
principals = ["admin"]
operations = ["create", "read"]

[[rules]]
principals = ["ci"]
operations = ["sign-raw", "read"]

[rate_limits]
ci = {{ rate = {RATE}, burst = {BURST} }}
"""


def _established(pid: int, port: int) -> int:
    """How many ESTABLISHED TCP connections to ``port`` process ``pid`` holds."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01" and fields[9] in inodes:
                count += 1
    return count


def test_two_workers_share_the_limit(tmp_path: Path) -> None:
    with running_daemon(tmp_path, policy=POLICY, clients=["admin", "ci"], workers=2) as daemon:
        daemon.wait_log("worker 0 INFO")
        daemon.wait_log("worker 1 INFO")
        with daemon.client("admin") as admin:
            key = admin.create_key("raw", "ecdsa-sha2-nistp256", role="targets")
        signed = refused = 0
        other: list[BaseException] = []
        clients: list[SignerClient] = []
        lock = threading.Lock()
        seconds = 4.0
        start = time.monotonic()
        deadline = start + seconds

        def hammer() -> None:
            nonlocal signed, refused
            i = 0
            while time.monotonic() < deadline:
                client = daemon.fresh_client("ci")
                with lock:
                    clients.append(client)
                i += 1
                try:
                    client.sign(key.key_id, f"blob {threading.get_ident()} {i}".encode())
                    with lock:
                        signed += 1
                except ClientError as exc:
                    with lock:
                        if exc.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                            assert "retry in" in exc.message
                            refused += 1
                        else:
                            other.append(exc)

        threads = [threading.Thread(target=hammer) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - start
        try:
            per_worker = {
                pid: _established(pid, daemon.port) for pid in child_pids(daemon.proc.pid)
            }
        finally:
            for client in clients:
                client.close()
        assert not other, other
        # Both workers served: the fresh connections are spread over the two processes.
        assert len([n for n in per_worker.values() if n > 0]) == 2, per_worker
        assert sum(per_worker.values()) >= len(clients) * 0.9, (per_worker, len(clients))
        allowed = (BURST + RATE * elapsed) * 1.1
        assert refused > 0 and signed >= BURST
        assert signed <= allowed, (
            f"{signed} signatures in {elapsed:.1f}s; the limit allows {allowed:.0f} "
            f"({len(clients)} connections over {per_worker})"
        )
        daemon.wait_serving()  # alive after all the refusals


# -- the daemon: a CN admin and a DNS SAN admin ---------------------------------------------

SOURCED = """
[[rules]]
principals = ["keeper"]
operations = ["create", "read"]

[[rules]]
principals = ["admin"]   # bare: the CN admin and the DNS SAN admin may both sign raw
operations = ["sign-raw"]

[rate_limits]
"dns:admin" = { rate = 0.001, burst = 2 }
"*" = { rate = 0.001, burst = 3 }
"""


def _sign(daemon: Daemon, cert: ClientCert, key_id: str, data: bytes) -> ClientError | None:
    """Sign as ``cert`` on a fresh connection: None if signed, else the error."""
    with daemon.fresh_client("keeper", cert=cert.cert, key=cert.key) as client:
        try:
            client.sign(key_id, data)
        except ClientError as exc:
            return exc
    return None


def test_a_cn_admin_cannot_drain_the_dns_san_admin(tmp_path: Path) -> None:
    """Two certificates both naming ``admin``: one by its CN only, one by a DNS SAN (and
    the same CN). Each has a bucket of its own, shared by both workers, and the
    ``"dns:admin"`` limit applies to the DNS SAN one only."""
    with running_daemon(tmp_path, policy=SOURCED, clients=["admin", "keeper"], workers=2) as daemon:
        daemon.wait_log("worker 0 INFO")
        daemon.wait_log("worker 1 INFO")
        cn_admin = make_client_cert(daemon.pki, "cn-admin", "admin")
        dns_admin = make_client_cert(daemon.pki, "dns-admin", "admin", dns=["admin"])
        with daemon.client("keeper") as keeper:
            key = keeper.create_key("raw", "ecdsa-sha2-nistp256", role="targets").key_id

        for i in range(3):  # the "*" limit: burst 3, spent over both workers
            assert _sign(daemon, cn_admin, key, f"cn {i}".encode()) is None
        for i in range(3, 5):
            refused = _sign(daemon, cn_admin, key, f"cn {i}".encode())
            assert refused is not None and refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert refused.message.startswith("rate limit for admin: 0.001/s, burst 3;")

        for i in range(2):  # not refused: the CN admin's empty bucket is not this one's
            assert _sign(daemon, dns_admin, key, f"dns {i}".encode()) is None
        refused = _sign(daemon, dns_admin, key, b"dns 2")
        assert refused is not None and refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert refused.message.startswith("rate limit for admin: 0.001/s, burst 2;")

        refused = _sign(daemon, cn_admin, key, b"cn again")  # still empty
        assert refused is not None and "burst 3" in refused.message
        daemon.wait_serving()  # alive after the refusals
        assert len(child_pids(daemon.proc.pid)) == 2  # both workers still there
