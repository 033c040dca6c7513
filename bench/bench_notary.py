"""Benchmark: signerd's notary-signer API against the real notary-signer, side by side.

Both servers run on this machine in one run, behind the same dev PKI (mutual TLS, P-256
certificates), and are driven by the same Python grpc.aio client (several client
processes, so the client is not the bottleneck) with the same payload (a 33-byte notary
timestamp-like JSON object) and an ECDSA P-256 key made through CreateKey:

* signerd: keys in a SoftHSM2 token, every signature audited (SQLite hash chain), the
  request authorised; ``--workers`` processes share the port.
* notary-signer (Debian's package): keys in memory (``storage.backend = "memory"``).

For 1, 4 and 16 concurrent callers it prints signs/s, p50 and p99 latency for each and
the ratio signerd / notary-signer (higher is better for signerd).

    python bench/bench_notary.py [--seconds 5] [--workers N] [--rounds 1] [--floor]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "clients"), str(ROOT / "tests")]

import grpc_floor  # noqa: E402

from harness import Daemon, child_pids, free_port, running_daemon  # noqa: E402
from signer.notary import keys as nkeys  # noqa: E402

PAYLOAD = b'{"_type":"Timestamp","version":1}'
GUN = "example.com/bench"
LEVELS = (1, 4, 16)


@dataclass(frozen=True)
class Target:
    name: str
    address: str
    ca: str
    cert: str
    key: str


def _client_proc(
    target: Target,
    key_id: str,
    concurrency: int,
    seconds: float,
    ready: Any,
    go: Any,
    out: Any,
) -> None:
    """One client process: ``concurrency`` Sign calls in flight on one grpc.aio channel."""
    import asyncio

    import grpc

    from signer.notary import signer_pb2 as pb
    from signer.notary import signer_pb2_grpc as pb_grpc

    async def run() -> tuple[int, list[float]]:
        creds = grpc.ssl_channel_credentials(
            Path(target.ca).read_bytes(),
            Path(target.key).read_bytes(),
            Path(target.cert).read_bytes(),
        )
        async with grpc.aio.secure_channel(target.address, creds) as channel:
            stub = pb_grpc.SignerStub(channel)
            request = pb.SignatureRequest(keyID=pb.KeyID(ID=key_id), content=PAYLOAD)
            for _ in range(20):  # warm up: connection, handshakes, caches
                await stub.Sign(request)
            count, latencies = 0, []
            ready.put(True)
            await asyncio.to_thread(go.wait)
            end = time.time() + seconds

            async def caller() -> None:
                nonlocal count
                while time.time() < end:
                    t = time.perf_counter()
                    response = await stub.Sign(request)
                    latencies.append(time.perf_counter() - t)
                    assert len(response.content) == 64
                    count += 1

            await asyncio.gather(*(caller() for _ in range(concurrency)))
            return count, latencies

    out.put(asyncio.run(run()))


def split(concurrency: int, max_procs: int) -> list[int]:
    """Callers per client process: up to ``max_procs`` processes, the rest as coroutines."""
    procs = min(concurrency, max_procs)
    return [concurrency // procs + (1 if i < concurrency % procs else 0) for i in range(procs)]


def drive(
    target: Target, key_id: str, concurrency: int, max_procs: int, seconds: float, pid: int
) -> tuple[float, float, float, float]:
    """(signs/s, p50 ms, p99 ms, server CPU ms per signature)."""
    ctx = mp.get_context("spawn")
    out, ready, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [
        ctx.Process(target=_client_proc, args=(target, key_id, n, seconds, ready, go, out))
        for n in split(concurrency, max_procs)
    ]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=60)
    cpu = cpu_seconds(pid)
    go.set()
    total, lats = 0, []
    for _ in procs:
        n, lat = out.get()
        total += n
        lats.extend(lat)
    cpu = cpu_seconds(pid) - cpu
    for p in procs:
        p.join()
    lats.sort()
    p50 = statistics.median(lats) * 1000
    p99 = lats[max(0, int(len(lats) * 0.99) - 1)] * 1000
    return total / seconds, p50, p99, cpu * 1000 / max(1, total)


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (signerd's worker processes), from /proc."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(child_pids(current))
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU time used so far by ``pid`` and its descendants."""
    total = 0.0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def create_key(target: Target) -> tuple[str, bytes]:
    """CreateKey (ecdsa, timestamp) on a target; checks one signature the way notary does."""
    import grpc

    from signer.notary import signer_pb2 as pb
    from signer.notary import signer_pb2_grpc as pb_grpc

    creds = grpc.ssl_channel_credentials(
        Path(target.ca).read_bytes(), Path(target.key).read_bytes(), Path(target.cert).read_bytes()
    )
    with grpc.secure_channel(target.address, creds) as channel:
        created = pb_grpc.KeyManagementStub(channel).CreateKey(
            pb.CreateKeyRequest(algorithm="ecdsa", gun=GUN, role="timestamp"), timeout=30
        )
        key_id = created.keyInfo.keyID.ID
        sig = pb_grpc.SignerStub(channel).Sign(
            pb.SignatureRequest(keyID=pb.KeyID(ID=key_id), content=PAYLOAD), timeout=30
        )
    if not nkeys.verify("ecdsa", created.publicKey, sig.content, PAYLOAD):
        raise SystemExit(f"{target.name}: the signature does not verify")
    if key_id != nkeys.key_id("ecdsa", created.publicKey):
        raise SystemExit(f"{target.name}: unexpected key ID {key_id}")
    return key_id, created.publicKey


def _floor_server(pki: str, port: int) -> None:
    """The floor (``grpc_floor``) with a notary Sign that does nothing."""
    from signer.notary import signer_pb2 as pb
    from signer.notary import signer_pb2_grpc as pb_grpc

    class Floor(pb_grpc.SignerServicer):
        async def Sign(self, request: Any, context: Any) -> Any:
            return pb.Signature(keyInfo=pb.KeyInfo(keyID=request.keyID), content=bytes(64))

    grpc_floor.serve(
        pki, port, lambda server: pb_grpc.add_SignerServicer_to_server(Floor(), server)
    )


def start_notary_signer(root: Path, daemon: Daemon) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("notary-signer")
    if binary is None:
        raise SystemExit("notary-signer is not installed (apt-get install notary)")
    port = free_port()
    pki = daemon.pki
    config = {
        "server": {
            "grpc_addr": f"127.0.0.1:{port}",
            "tls_cert_file": str(pki / "server.pem"),
            "tls_key_file": str(pki / "server-key.pem"),
            "client_ca_file": str(pki / "ca.pem"),
        },
        # error: notary-signer otherwise logs a line per signature; signerd logs none.
        "logging": {"level": "error"},
        "storage": {"backend": "memory"},
    }
    path = root / "notary-signer.json"
    path.write_text(json.dumps(config))
    log = (root / "notary-signer.log").open("ab")
    env = dict(os.environ, NOTARY_SIGNER_DEFAULT_ALIAS="bench")
    proc = subprocess.Popen(
        [binary, "-config", str(path), "-logf", "logfmt"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=root,
    )
    return proc, port


def wait_ready(target: Target, proc: subprocess.Popen[bytes], log: Path) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    creds = grpc.ssl_channel_credentials(
        Path(target.ca).read_bytes(), Path(target.key).read_bytes(), Path(target.cert).read_bytes()
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"notary-signer exited:\n{log.read_text()}")
        try:
            with grpc.secure_channel(target.address, creds) as channel:
                status = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service="grpc.health.v1.Health.Signer"),
                    timeout=2,
                )
                if status.status == health_pb2.HealthCheckResponse.SERVING:
                    return
        except grpc.RpcError:
            time.sleep(0.2)
    raise SystemExit(f"notary-signer not ready:\n{log.read_text()}")


@contextmanager
def both_signers(root: Path, workers: int) -> Iterator[tuple[Daemon, Target, Target, Any]]:
    """signerd and notary-signer on loopback with the same client certificate, both ready;
    notary-signer stopped afterwards. Yields (daemon, signerd target, notary-signer target,
    the notary-signer process)."""
    with running_daemon(root / "signerd", clients=["bench"], workers=workers) as daemon:
        client = daemon.client_config("bench")
        common = {"ca": str(client.ca), "cert": str(client.cert), "key": str(client.key)}
        ours = Target("signerd", f"localhost:{daemon.port}", **common)
        proc, port = start_notary_signer(root, daemon)
        theirs = Target("notary-signer", f"localhost:{port}", **common)
        try:
            wait_ready(theirs, proc, root / "notary-signer.log")
            yield daemon, ours, theirs, proc
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    ap.add_argument(
        "--workers",
        type=int,
        default=max(1, (os.cpu_count() or 2) // 2),
        help="signerd worker processes (default: half the cores; the clients need the rest)",
    )
    ap.add_argument("--client-procs", type=int, default=4, help="client processes at most")
    ap.add_argument("--rounds", type=int, default=1, help="repeat and keep the best of each")
    ap.add_argument(
        "--floor", action="store_true", help="also measure a bare Python grpc.aio server"
    )
    args = ap.parse_args()

    results: dict[tuple[str, int], tuple[float, float, float, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with (
            both_signers(root, args.workers) as (daemon, ours, theirs, proc),
            contextlib.ExitStack() as floor,
        ):
            targets = [ours, theirs]
            key_ids = {t.name: create_key(t)[0] for t in (ours, theirs)}
            assert daemon.proc is not None
            pids = {ours.name: daemon.proc.pid, theirs.name: proc.pid}
            if args.floor:
                floor_port = free_port()
                pids["floor"] = floor.enter_context(
                    grpc_floor.running(_floor_server, str(daemon.pki), floor_port)
                )
                targets.append(replace(ours, name="floor", address=f"localhost:{floor_port}"))
                key_ids["floor"] = "floor"
            for _ in range(args.rounds):
                for level in LEVELS:
                    for target in targets:  # interleaved: same machine state
                        result = drive(
                            target,
                            key_ids[target.name],
                            level,
                            args.client_procs,
                            args.seconds,
                            pids[target.name],
                        )
                        best = results.get((target.name, level))
                        if best is None or result[0] > best[0]:
                            results[(target.name, level)] = result

    print(
        f"notary Sign, ECDSA P-256, {len(PAYLOAD)}-byte payload, mutual TLS; "
        f"signerd: SoftHSM2, {args.workers} workers, audited; notary-signer: memory backend; "
        f"{os.cpu_count()} cores, {args.seconds:.0f}s per run, best of {args.rounds}"
    )
    head = (
        f"{'callers':>7} | {'signerd/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'cpu ms':>6} | "
        f"{'notary/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'cpu ms':>6} | {'ratio':>5}"
    )
    print(head)
    print("-" * len(head))
    for level in LEVELS:
        a = results[("signerd", level)]
        b = results[("notary-signer", level)]
        print(
            f"{level:>7} | {a[0]:9.0f} {a[1]:7.2f} {a[2]:7.2f} {a[3]:6.3f} | "
            f"{b[0]:9.0f} {b[1]:7.2f} {b[2]:7.2f} {b[3]:6.3f} | {a[0] / b[0]:5.2f}"
        )
    if args.floor:
        print("floor: a bare Python grpc.aio server (same mTLS) whose Sign does nothing")
        for level in LEVELS:
            f = results[("floor", level)]
            print(f"{level:>7} | {f[0]:9.0f} {f[1]:7.2f} {f[2]:7.2f} {f[3]:6.3f}")
    print("cpu ms: server CPU time (user + system, all its processes) per signature")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
