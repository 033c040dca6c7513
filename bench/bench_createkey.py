"""Benchmark: CreateKey (ECDSA P-256) on signerd against the real notary-signer.

Both servers run on this machine in one run, behind the same dev PKI (mutual TLS), and
are called by the same Python gRPC client, one call at a time:

* notary-signer (Debian's package): keys in memory (``storage.backend = "memory"``).
* signerd, notary API (``notary.KeyManagement/CreateKey``, ecdsa, role timestamp): key
  generated in a fresh SoftHSM2 token, registry row, notary key map row, audit entry
  committed (synchronous=FULL) before the answer.
* signerd, signer_api.v1 ``KeyService/CreateKey`` (ALGORITHM_ECDSA_SHA2_NISTP256, role timestamp).

For each it prints the first call (a fresh channel: TLS handshake included), the median
and p90 of the next ``N`` calls, the median of the first and the last tenth (does the
cost grow with the token?), and the ratio signerd / notary-signer. At the end it counts
the objects on signerd's token (read by a separate process through PKCS#11).

    python bench/bench_createkey.py [-n 200] [--rounds 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "clients"), str(ROOT / "tests"), str(ROOT / "bench")]

from bench_notary import GUN, Target, both_signers  # noqa: E402

from harness import read_token_objects  # noqa: E402


def _channel(target: Target) -> Any:
    import grpc

    creds = grpc.ssl_channel_credentials(
        Path(target.ca).read_bytes(), Path(target.key).read_bytes(), Path(target.cert).read_bytes()
    )
    return grpc.secure_channel(target.address, creds)


def notary_call(channel: Any) -> Callable[[int], None]:
    from signer.notary import signer_pb2 as pb
    from signer.notary import signer_pb2_grpc as pb_grpc

    stub = pb_grpc.KeyManagementStub(channel)
    request = pb.CreateKeyRequest(algorithm="ecdsa", gun=GUN, role="timestamp")

    def call(i: int) -> None:
        created = stub.CreateKey(request, timeout=30)
        assert created.keyInfo.keyID.ID and created.publicKey

    return call


def v1_call(channel: Any) -> Callable[[int], None]:
    from signer_api.v1 import signer_pb2 as pb
    from signer_api.v1 import signer_pb2_grpc as pb_grpc

    stub = pb_grpc.KeyServiceStub(channel)

    def call(i: int) -> None:
        request = pb.CreateKeyRequest(
            label=f"bench-{i}",
            algorithm=pb.ALGORITHM_ECDSA_SHA2_NISTP256,
            role="timestamp",
            repository=GUN,
        )
        assert stub.CreateKey(request, timeout=30).key.key_id

    return call


def measure(target: Target, make: Callable[[Any], Callable[[int], None]], n: int) -> list[float]:
    """[first call on a fresh channel, then n more on the same channel], in ms."""
    with _channel(target) as channel:
        call = make(channel)
        times = []
        for i in range(n + 1):
            t = time.perf_counter()
            call(i)
            times.append((time.perf_counter() - t) * 1000)
    return times


def summary(times: list[float]) -> dict[str, float]:
    rest = sorted(times[1:])
    tenth = max(1, len(times[1:]) // 10)
    return {
        "first": times[0],
        "p50": statistics.median(rest),
        "p90": rest[max(0, int(len(rest) * 0.9) - 1)],
        "head": statistics.median(times[1 : 1 + tenth]),
        "tail": statistics.median(times[-tenth:]),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=200, help="calls per target after the first")
    ap.add_argument("--workers", type=int, default=1, help="signerd worker processes")
    ap.add_argument("--rounds", type=int, default=1, help="repeat; keep each round's figures")
    args = ap.parse_args()

    rows: list[tuple[str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with both_signers(root, args.workers) as (daemon, ours, theirs, _):
            for r in range(args.rounds):
                suffix = f" #{r + 1}" if args.rounds > 1 else ""
                for name, target, make in (
                    ("notary-signer", theirs, notary_call),
                    ("signerd notary", ours, notary_call),
                    ("signerd v1", ours, v1_call),
                ):
                    rows.append((name + suffix, summary(measure(target, make, args.n))))
            objects = read_token_objects(daemon)

    print(
        f"CreateKey ECDSA P-256 (role timestamp), sequential, mutual TLS, {args.n} calls + "
        f"the first; signerd: SoftHSM2 (fresh token), {args.workers} worker(s), audited; "
        f"notary-signer: memory backend; {os.cpu_count()} cores"
    )
    head = (
        f"{'target':<18} | {'first ms':>8} {'p50 ms':>7} {'p90 ms':>7} | "
        f"{'1st 10%':>7} {'last 10%':>8} | {'p50 ratio':>9}"
    )
    print(head)
    print("-" * len(head))
    base: dict[str, float] = {}
    for name, s in rows:
        if name.startswith("notary-signer"):
            base = s
        ratio = s["p50"] / base["p50"] if base else float("nan")
        print(
            f"{name:<18} | {s['first']:8.2f} {s['p50']:7.2f} {s['p90']:7.2f} | "
            f"{s['head']:7.2f} {s['tail']:8.2f} | {ratio:9.2f}"
        )
    private = sum(1 for o in objects if o["class"] == "private")
    print(
        f"objects on signerd's token at the end: {len(objects)} "
        f"({private} private, {len(objects) - private} public)"
    )
    print("p50 ratio: signerd median / notary-signer median (lower is better for signerd)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
