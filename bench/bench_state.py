"""Benchmark: the state on SQLite against PostgreSQL, one replica and two, side by side.

Starts a throw-away PostgreSQL cluster (as the tests do: initdb in a temp dir, loopback)
and, each on its own SoftHSM token, four signerd set-ups at once:

* ``sqlite, 1 worker`` and ``sqlite, 2 workers``: one host, the state in SQLite files;
* ``postgresql, 1 replica`` and ``postgresql, 2 replicas``: the state in one database,
  the replicas each one worker process on the same token, the client processes spread
  over them (as a load balancer would).

Then drives each in interleaved rounds (the order rotates each round) with:

* unary Sign of a TUF timestamp payload, a new version each call: every signature
  claims its version in the state (one transaction) and appends its audit entry;
* SignBatch of 64 digests: one audit transaction for the batch.

Each in-flight caller has its own key (versions of one key must arrive in order), all
created before the rounds. Prints the medians of the rounds, and PostgreSQL's ratio to
SQLite with as many processes (1 replica vs 1 worker, 2 replicas vs 2 workers); the goal
of issue 11 is >= 0.8 on unary and >= 0.9 on SignBatch. At the end every set-up must
hold an audit entry for each signature counted.

    PYTHONPATH=$PWD:$PWD/clients:$PWD/tests python3 bench/bench_state.py   # ~2 min
        [--seconds 4] [--rounds 3] [--clients 2] [--concurrency 8] [--batch 64]
        [--postgres-cpus 1]

``--postgres-cpus`` gives PostgreSQL CPUs of its own, as a database host would have: its
processes run there, and the daemons and clients of every set-up (SQLite's too) on the
other CPUs, so both backends have the same signer side.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "clients"), str(ROOT / "tests")]

import pg_harness  # noqa: E402

from harness import Daemon, create_token, free_port  # noqa: E402

CONNECTIONS = 2  # per client process


def tuf_payload(version: int) -> bytes:
    return (
        b'{"_type":"timestamp","expires":"2030-01-01T00:00:00Z","meta":{},"version":%d}' % version
    )


def _client_proc(
    config: dict[str, Any],
    key_ids: list[str],
    mode: str,
    batch: int,
    base_version: int,
    seconds: float,
    start_at: float,
    out: Any,
) -> None:
    """One client process: a caller per key in ``key_ids``, each with one call in flight."""
    import asyncio

    import grpc

    from signer_api.v1 import signer_pb2 as pb
    from signer_api.v1 import signer_pb2_grpc as pb_grpc

    async def run() -> tuple[int, int, list[float]]:
        creds = grpc.ssl_channel_credentials(
            Path(config["ca"]).read_bytes(),
            Path(config["key"]).read_bytes(),
            Path(config["cert"]).read_bytes(),
        )
        options = [("grpc.use_local_subchannel_pool", 1)]  # a real connection per channel
        channels = [
            grpc.aio.secure_channel(config["address"], creds, options=options)
            for _ in range(CONNECTIONS)
        ]
        stubs = [pb_grpc.SigningServiceStub(channel) for channel in channels]
        digests = [hashlib.sha256(b"artefact-%d" % n).digest() for n in range(batch)]
        items = [pb.SignBatchItem(digest=d) for d in digests]
        count, failed, latencies = 0, 0, []
        try:
            await asyncio.sleep(max(0.0, start_at - time.time()))
            end = start_at + seconds

            async def caller(stub: Any, key_id: str) -> None:
                nonlocal count, failed
                version = base_version
                many = pb.SignBatchRequest(key_id=key_id, items=items)
                while time.time() < end:
                    t = time.perf_counter()
                    try:
                        if mode == "unary":
                            version += 1
                            request = pb.SignRequest(key_id=key_id, payload=tuf_payload(version))
                            response = await stub.Sign(request)
                            done = 1 if response.signature else 0
                        else:
                            response = await stub.SignBatch(many)
                            done = sum(1 for r in response.results if r.status.code == 0)
                    except grpc.RpcError:
                        failed += 1
                        continue
                    if time.time() <= end:  # calls finishing after the window do not count
                        count += done
                        latencies.append(time.perf_counter() - t)

            await asyncio.gather(*(caller(stubs[i % len(stubs)], k) for i, k in enumerate(key_ids)))
            return count, failed, latencies
        finally:
            for channel in channels:
                await channel.close()

    out.put(asyncio.run(run()))


@dataclass
class Setup:
    name: str
    backend: str
    processes: int
    daemons: list[Daemon]
    keys: list[str] = field(default_factory=list)
    results: dict[str, list[tuple[float, float, float]]] = field(default_factory=dict)
    counted: int = 0
    failed: int = 0


def drive(
    setup: Setup, mode: str, clients: int, batch: int, base: int, seconds: float
) -> tuple[float, float, float]:
    """signs/s, p50 ms, p99 ms; client process i calls replica i mod n."""
    ctx = mp.get_context("spawn")
    out: Any = ctx.Queue()
    start_at = time.time() + 1.5
    per_client = [setup.keys[i::clients] for i in range(clients)]
    procs = []
    for i in range(clients):
        daemon = setup.daemons[i % len(setup.daemons)]
        cfg = daemon.client_config("admin").__dict__
        args = (cfg, per_client[i], mode, batch, base, seconds, start_at, out)
        procs.append(ctx.Process(target=_client_proc, args=args))
    for p in procs:
        p.start()
    total, lats = 0, []
    for _ in procs:
        n, failed, lat = out.get()
        total += n
        setup.failed += failed
        lats.extend(lat)
    for p in procs:
        p.join()
    setup.counted += total
    lats.sort()
    if not lats:
        return 0.0, float("nan"), float("nan")
    p50 = statistics.median(lats) * 1000
    p99 = lats[max(0, int(len(lats) * 0.99) - 1)] * 1000
    return total / seconds, p50, p99


def pin_postgres(cluster: Any, cpus: set[int]) -> None:
    """The cluster's processes on ``cpus``: the postmaster and what it has started (the
    backends it forks later inherit the postmaster's affinity)."""
    postmaster = int((cluster.data / "postmaster.pid").read_text().split()[0])
    pids = [postmaster]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == postmaster:
                    pids.append(int(entry.name))
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(pid, cpus)


@contextlib.contextmanager
def setups(tmp: Path, cluster: Any) -> Iterator[list[Setup]]:
    made: list[Setup] = []
    password = tmp / "db-password"
    password.write_text(cluster.password)
    password.chmod(0o600)
    try:
        for name, backend, processes in (
            ("sqlite, 1 worker", "sqlite", 1),
            ("sqlite, 2 workers", "sqlite", 2),
            ("postgresql, 1 replica", "postgresql", 1),
            ("postgresql, 2 replicas", "postgresql", 2),
        ):
            root = tmp / name.replace(", ", "-").replace(" ", "")
            root.mkdir()
            env = create_token(root / "hsm")
            daemons = []
            if backend == "sqlite":
                daemons.append(
                    Daemon(root=root / "a", port=free_port(), env=env, workers=processes)
                )
            else:
                url = cluster.fresh_database(root.name.replace("-", "_"))
                for n in range(processes):
                    daemon = Daemon(
                        root=root / "abc"[n],
                        port=free_port(),
                        env=env,
                        state_options=(
                            f'url = "{url}"\npassword_file = "{password}"\nreplica = "{"abc"[n]}"'
                        ),
                    )
                    daemons.append(daemon)
            for n, daemon in enumerate(daemons):
                daemon.root.mkdir()
                if n:  # one PKI for the replicas of a set-up
                    shutil.copytree(daemons[0].pki, daemon.pki)
                daemon.start()
            made.append(Setup(name, backend, processes, daemons))
        yield made
    finally:
        for setup in made:
            for daemon in setup.daemons:
                daemon.stop()


def audited(setup: Setup, cluster: Any) -> int:
    sql = (
        "SELECT count(*) FROM audit WHERE operation IN ('sign', 'sign-raw') AND outcome = 'allowed'"
    )
    if setup.backend == "sqlite":
        import sqlite3

        with sqlite3.connect(setup.daemons[0].state / "audit.db") as conn:
            return int(conn.execute(sql).fetchone()[0])
    import psycopg

    url = setup.daemons[0].config_path.read_text().split('url = "')[1].split('"')[0]
    with psycopg.connect(url, password=cluster.password) as conn:
        row = conn.execute(sql).fetchone()
        return int(row[0]) if row else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=2, help="client processes")
    ap.add_argument("--concurrency", type=int, default=8, help="callers (keys) per client")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument(
        "--postgres-cpus",
        type=lambda text: {int(n) for n in text.split(",")},
        help="CPUs of PostgreSQL's own, e.g. 1; the daemons and clients get the others",
    )
    args = ap.parse_args()
    if not pg_harness.available():
        print("PostgreSQL 15 is not installed: run `make deps`")
        return 2
    callers = args.clients * args.concurrency
    pg_cpus: set[int] = args.postgres_cpus or set()
    signer_cpus = os.sched_getaffinity(0) - pg_cpus
    if pg_cpus:
        if not signer_cpus or not pg_cpus <= os.sched_getaffinity(0):
            print(f"--postgres-cpus {sorted(pg_cpus)}: leave the signer side a CPU of this host")
            return 2
        os.sched_setaffinity(0, signer_cpus)  # inherited by every daemon and client
    with (
        tempfile.TemporaryDirectory() as tmp_name,
        pg_harness.running_cluster() as cluster,
        setups(Path(tmp_name), cluster) as made,
    ):
        if pg_cpus:
            pin_postgres(cluster, pg_cpus)
        for setup in made:
            with setup.daemons[0].client() as client:
                for n in range(callers):
                    key = client.create_key(f"bench-{n}", "ecdsa-sha2-nistp256", "timestamp")
                    client.sign(key.key_id, tuf_payload(1))
                    setup.keys.append(key.key_id)
        modes = (("unary", 1), ("batch", args.batch))
        for round_no in range(args.rounds):
            order = made[round_no % len(made) :] + made[: round_no % len(made)]
            for setup in order:
                for mode, size in modes:
                    base = (round_no + 1) * 10_000_000
                    got = drive(setup, mode, args.clients, size, base, args.seconds)
                    setup.results.setdefault(mode, []).append(got)
        checks = [(s, audited(s, cluster)) for s in made]

    where = (
        f"PostgreSQL on CPU {','.join(map(str, sorted(pg_cpus)))}, daemons and clients on "
        f"{','.join(map(str, sorted(signer_cpus)))}"
        if pg_cpus
        else "daemons, PostgreSQL and clients on all of them"
    )
    print(
        f"signerd state bench: ECDSA P-256 on SoftHSM2, mTLS, {os.cpu_count()} cores ({where}); "
        f"{args.clients} client processes, "
        f"{callers} callers (a key each); {args.rounds} interleaved rounds of "
        f"{args.seconds:g} s; medians"
    )
    print(
        f"{'set-up':24} | {'unary TUF signs/s':>17} {'p50 ms':>7} {'p99 ms':>7} | "
        f"{f'SignBatch {args.batch} sigs/s':>19} {'p50 ms':>7} {'p99 ms':>7} | rounds (unary; batch)"
    )
    print("-" * 132)
    medians: dict[str, dict[str, float]] = {}
    for setup in made:
        cells, rounds = [], []
        for mode, _size in modes:
            rows = setup.results[mode]
            rate = statistics.median(r[0] for r in rows)
            medians.setdefault(setup.name, {})[mode] = rate
            p50 = statistics.median(r[1] for r in rows)
            p99 = statistics.median(r[2] for r in rows)
            width = 17 if mode == "unary" else 19
            cells.append(f"{rate:{width}.0f} {p50:7.2f} {p99:7.2f}")
            rounds.append(" ".join(f"{r[0]:.0f}" for r in rows))
        print(f"{setup.name:24} | {cells[0]} | {cells[1]} | {'; '.join(rounds)}")
    print("-" * 132)
    for pg_name, lite_name in (
        ("postgresql, 1 replica", "sqlite, 1 worker"),
        ("postgresql, 2 replicas", "sqlite, 2 workers"),
    ):
        unary = medians[pg_name]["unary"] / medians[lite_name]["unary"]
        batch = medians[pg_name]["batch"] / medians[lite_name]["batch"]
        verdict = "met" if unary >= 0.8 and batch >= 0.9 else "NOT met"
        print(
            f"{pg_name} / {lite_name}: unary {unary:.2f} (goal 0.8), SignBatch {batch:.2f} "
            f"(goal 0.9): {verdict}"
        )
    ok = True
    for setup, entries in checks:
        line = f"{setup.name}: {entries} audit rows for allowed signatures, {setup.counted} counted"
        if setup.failed:
            line += f", {setup.failed} failed calls"
        print(line)
        # Each set-up's warm-up signatures are audited too: at least as many, never fewer.
        if entries < setup.counted:
            print(f"FAIL: {setup.name}: fewer audit rows than signatures returned")
            ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
