"""Benchmark: unary Sign and SignBatch (ECDSA P-256) against raw python-pkcs11 signing.

Starts a real SoftHSM token and a real signerd (mutual TLS, N worker processes) in a temp
dir, then drives it from several client processes. Prints signs/s, p50/p99 latency and the
ratio to the raw token rate measured in a separate process on the same token, before
and after the daemon's runs (the faster of the two is the baseline). The same clients
then drive the floor, a grpc.aio server with the same mTLS whose handlers do nothing, so
each run also says what the daemon costs beyond gRPC and the token on this machine today.

    python bench/bench_sign.py [--seconds 5] [--workers 2] [--clients 4] [--batch 64]
                               [--pin-workers]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "clients"), str(ROOT / "tests")]

import grpc_floor  # noqa: E402

from harness import child_pids, free_port, proc_stat, running_daemon  # noqa: E402

# A TUF payload (the version rules apply: a claim per signature) and a raw one (build farms).
TUF_PAYLOAD = b'{"_type":"timestamp","expires":"2030-01-01T00:00:00Z","meta":{},"version":1}'
RAW_PAYLOAD = b"artefact sha256:" + bytes(range(48))
CONNECTIONS = 4  # per client process

RAW_SCRIPT = textwrap.dedent(
    """
    import hashlib, os, sys, time, pkcs11
    from pkcs11 import Attribute, Mechanism, ObjectClass
    lib = pkcs11.lib("/usr/lib/softhsm/libsofthsm2.so")
    session = lib.get_token(token_label=sys.argv[1]).open(user_pin=os.environ["SIGNER_PIN"])
    key = next(session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY,
                                    Attribute.ID: bytes.fromhex(sys.argv[2])}))
    seconds = float(sys.argv[3])
    lat = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        key.sign(hashlib.sha256(b"%d" % len(lat)).digest(), mechanism=Mechanism.ECDSA)
        lat.append(time.perf_counter() - t)
    print(len(lat), *lat[:: max(1, len(lat) // 2000)])
    """
)


def _client_proc(
    config: dict,
    key_id: str,
    mode: str,
    batch: int,
    concurrency: int,
    seconds: float,
    start_at: float,
    out: mp.Queue,
    payload: bytes = RAW_PAYLOAD,
) -> None:
    """One client process: ``concurrency`` calls in flight over CONNECTIONS channels.

    Several connections per process, as a build farm has: SO_REUSEPORT spreads
    connections (not calls) over the worker processes.
    """
    import asyncio

    import grpc

    from signer_api.v1 import signer_pb2 as pb
    from signer_api.v1 import signer_pb2_grpc as pb_grpc

    async def run() -> tuple[int, list[float], float]:
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
        try:
            unary = pb.SignRequest(key_id=key_id, payload=payload)
            # The build-farm shape: many artefact digests per call.
            digests = [hashlib.sha256(b"artefact-%d" % n).digest() for n in range(batch)]
            many = pb.SignBatchRequest(
                key_id=key_id, items=[pb.SignBatchItem(digest=d) for d in digests]
            )
            for stub in stubs:
                await stub.Sign(unary)
            count, latencies = 0, []
            await asyncio.sleep(max(0.0, start_at - time.time()))
            end = start_at + seconds
            cpu_at_start = time.process_time()  # the load's own CPU: it shares the cores

            async def caller(stub: pb_grpc.SigningServiceStub) -> None:
                nonlocal count
                while time.time() < end:
                    t = time.perf_counter()
                    if mode == "unary":
                        response = await stub.Sign(unary)
                        assert response.signature
                        done = 1
                    else:
                        response = await stub.SignBatch(many)
                        assert all(r.status.code == 0 for r in response.results)
                        done = len(response.results)
                    if time.time() <= end:  # calls finishing after the window do not count
                        count += done
                        latencies.append(time.perf_counter() - t)

            await asyncio.gather(*(caller(stubs[i % len(stubs)]) for i in range(concurrency)))
            return count, latencies, time.process_time() - cpu_at_start
        finally:
            for channel in channels:
                await channel.close()

    out.put(asyncio.run(run()))


def _floor_server(pki: str, port: int) -> None:
    """The floor (``grpc_floor``) with a Sign and a SignBatch that answer at once, in the
    daemon's answers' shape."""
    from signer_api.v1 import signer_pb2 as pb
    from signer_api.v1 import signer_pb2_grpc as pb_grpc

    signature, ok = bytes(72), pb.ItemStatus(code=0)

    class Floor(pb_grpc.SigningServiceServicer):
        async def Sign(self, request: pb.SignRequest, context: object) -> pb.SignResponse:
            return pb.SignResponse(key_id=request.key_id, signature=signature, scheme="floor")

        async def SignBatch(
            self, request: pb.SignBatchRequest, context: object
        ) -> pb.SignBatchResponse:
            response = pb.SignBatchResponse()
            add = response.results.add
            for _ in request.items:
                add(status=ok, key_id=request.key_id, signature=signature, scheme="floor")
            return response

    grpc_floor.serve(
        pki, port, lambda server: pb_grpc.add_SigningServiceServicer_to_server(Floor(), server)
    )


@contextlib.contextmanager
def floor_server(daemon) -> Iterator[tuple[dict, int]]:
    """A running floor server: the client config to reach it and its process id."""
    port = free_port()
    with grpc_floor.running(_floor_server, str(daemon.pki), port) as pid:
        yield daemon.client_config("admin", address=f"localhost:{port}").__dict__, pid


def _daemon_stats(root_pid: int) -> dict[int, list[str]]:
    """pid -> /proc stat fields (after the command name) of the daemon and its children."""
    pids = [root_pid, *child_pids(root_pid)]
    return {pid: fields for pid in pids if (fields := proc_stat(pid)) is not None}


def _cpu_seconds(root_pid: int) -> float:
    """utime + stime of the daemon and its worker processes (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    stats = _daemon_stats(root_pid).values()
    return sum(int(fields[11]) + int(fields[12]) for fields in stats) / tick


def _workers(root_pid: int) -> list[int]:
    """The daemon's worker processes (itself when it runs one worker)."""
    return sorted(pid for pid in _daemon_stats(root_pid) if pid != root_pid) or [root_pid]


def connections_per_worker(root_pid: int) -> list[int]:
    """Established TCP connections each worker holds (Linux /proc). SO_REUSEPORT hashes
    each connection to a worker, so a few long-lived connections may split unevenly."""
    owner: dict[str, int] = {}
    workers = _workers(root_pid)
    for n, pid in enumerate(workers):
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                owner[target[8:-1]] = n
    counts = [0] * len(workers)
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "01" and fields[9] in owner:  # ESTABLISHED
                counts[owner[fields[9]]] += 1
    return counts


def drive(
    target: tuple[dict, int],
    key_id: str,
    mode: str,
    clients: int,
    threads: int,
    batch: int,
    seconds: float,
    payload: bytes = RAW_PAYLOAD,
    split: list[int] | None = None,
) -> tuple[float, float, float, float, float]:
    """signs/s, p50 ms, p99 ms, and the daemon's and the clients' CPU ms per signature
    over the window (the clients run on the same cores). ``split``, if given, receives
    the connections per worker, sampled mid-window."""
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()
    cfg, root_pid = target  # the client config to reach the server, its process id
    start_at = time.time() + 2.0
    procs = [
        ctx.Process(
            target=_client_proc,
            args=(cfg, key_id, mode, batch, threads, seconds, start_at, out, payload),
        )
        for _ in range(clients)
    ]
    for p in procs:
        p.start()
    time.sleep(max(0.0, start_at - time.time()))
    cpu_before = _cpu_seconds(root_pid)

    def sample() -> None:
        if split is not None:
            split.extend(connections_per_worker(root_pid))

    sampler = threading.Timer(seconds / 2, sample)
    sampler.start()
    total, lats, client_cpu = 0, [], 0.0
    for _ in procs:
        n, lat, used = out.get()
        total += n
        lats.extend(lat)
        client_cpu += used
    cpu = _cpu_seconds(root_pid) - cpu_before
    sampler.join()
    for p in procs:
        p.join()
    lats.sort()
    p50 = statistics.median(lats) * 1000
    p99 = lats[int(len(lats) * 0.99) - 1] * 1000
    per_sig = 1000 / max(1, total)
    return total / seconds, p50, p99, cpu * per_sig, client_cpu * per_sig


def raw_rate(daemon, object_id: str, seconds: float) -> tuple[float, float, float, float, float]:
    env = dict(os.environ, **daemon.env)
    out = subprocess.run(
        [sys.executable, "-c", RAW_SCRIPT, daemon.label, object_id, str(seconds)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    n, lats = int(out[0]), sorted(float(x) for x in out[1:])
    p50, p99 = statistics.median(lats) * 1000, lats[int(len(lats) * 0.99) - 1] * 1000
    return n / seconds, p50, p99, float("nan"), float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--clients", type=int, default=2, help="client processes")
    ap.add_argument("--concurrency", type=int, default=16, help="calls in flight per client")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument(
        "--pin-workers", action="store_true", help="[server] pin_workers: a CPU per worker"
    )
    args = ap.parse_args()
    import sqlite3

    with (
        tempfile.TemporaryDirectory() as tmp,
        running_daemon(
            Path(tmp),
            workers=args.workers,
            server_options="pin_workers = true" if args.pin_workers else "",
        ) as daemon,
    ):
        client = daemon.client()
        key = client.create_key("bench-p256", "ecdsa-sha2-nistp256", "timestamp")
        client.sign(key.key_id, TUF_PAYLOAD)
        object_id = (
            sqlite3.connect(daemon.state / "keys.db")
            .execute("SELECT object_id FROM keys WHERE key_id = ?", (key.key_id,))
            .fetchone()[0]
        )
        raw_before = raw_rate(daemon, object_id, args.seconds)
        ours = (daemon.client_config("admin").__dict__, daemon.proc.pid)
        unary = drive(ours, key.key_id, "unary", args.clients, args.concurrency, 1, args.seconds)
        unary_tuf = drive(
            ours,
            key.key_id,
            "unary",
            args.clients,
            args.concurrency,
            1,
            args.seconds,
            TUF_PAYLOAD,
        )
        split: list[int] = []
        batch = drive(
            ours, key.key_id, "batch", args.clients, 4, args.batch, args.seconds, split=split
        )
        # The floor, in the same run: the same clients against a gRPC server that does nothing.
        with floor_server(daemon) as floor:
            floor_unary = drive(
                floor, key.key_id, "unary", args.clients, args.concurrency, 1, args.seconds
            )
            floor_batch = drive(
                floor, key.key_id, "batch", args.clients, 4, args.batch, args.seconds
            )
        # The VM's speed drifts: the token is measured before and after the daemon, and
        # the ratios use the faster of the two (the stricter baseline).
        raw_after = raw_rate(daemon, object_id, args.seconds)
        raw = max(raw_before, raw_after)
        audited = (
            sqlite3.connect(daemon.state / "audit.db")
            .execute(
                "SELECT COUNT(*) FROM audit WHERE operation IN ('sign', 'sign-raw') AND outcome = 'allowed'"
            )
            .fetchone()[0]
        )
    print(
        f"signerd bench: ECDSA P-256, {args.workers} worker processes"
        f"{' (pinned: a CPU each)' if args.pin_workers else ''}, {args.clients} client "
        f"processes, {os.cpu_count()} cores, {args.seconds:.0f}s per run"
    )
    print(
        f"{'path':44} {'signs/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'vs raw':>7} "
        f"{'server CPU ms/sig':>18} {'client CPU ms/sig':>18}"
    )
    rows = [
        ("raw python-pkcs11 (1 thread), before", raw_before),
        ("raw python-pkcs11 (1 thread), after", raw_after),
        (f"unary Sign, raw ({args.clients}x{args.concurrency} in flight)", unary),
        (f"unary Sign, TUF timestamp ({args.clients}x{args.concurrency})", unary_tuf),
        (f"SignBatch {args.batch} digests ({args.clients}x4 in flight)", batch),
        (f"floor: no-op unary Sign ({args.clients}x{args.concurrency})", floor_unary),
        (f"floor: no-op SignBatch {args.batch} ({args.clients}x4)", floor_batch),
    ]
    for name, (rate, p50, p99, cpu, client_cpu) in rows:
        print(
            f"{name:44} {rate:10.0f} {p50:8.2f} {p99:8.2f} {rate / raw[0]:7.2f} {cpu:18.3f} "
            f"{client_cpu:18.3f}"
        )
    print(f"SignBatch connections per worker (mid-window, incl. the set-up client's): {split}")
    token_ms = 1000 / raw[0]  # one signature of the raw loop: a thread busy signing
    print(
        "server CPU against the floor (a grpc.aio server, same mTLS and event loop, one "
        f"process, handlers that do nothing): unary raw {unary[3] / floor_unary[3]:.2f}x, "
        f"TUF {unary_tuf[3] / floor_unary[3]:.2f}x the floor's {floor_unary[3]:.3f} ms"
    )
    print(
        f"SignBatch CPU a signature: floor {floor_batch[3] * 1000:.0f} us + token "
        f"{token_ms * 1000:.0f} us (1 / raw rate) + the daemon's own "
        f"{(batch[3] - floor_batch[3] - token_ms) * 1000:.0f} us"
    )
    counted = round(sum(r[0] for r in (unary, unary_tuf, batch)) * args.seconds)
    print(f"audit rows for allowed signatures: {audited} (signatures counted above: {counted})")
    if audited < counted:
        print("FAIL: fewer audit rows than signatures returned")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
