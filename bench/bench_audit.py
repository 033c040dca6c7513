"""Benchmark: the audit log's commit cost, synchronous=FULL against NORMAL, and its batching.

Writes audit entries through ``AuditLog`` (the real writer thread, a real SQLite file in
WAL mode) from 1 and 16 concurrent callers, threads (``record``) and asyncio tasks
(``record_async``, the server's path), and prints commits/s, entries per commit, entries/s
and the mean latency of one ``record``. Also times the entry hash alone.

    python bench/bench_audit.py [--seconds 3] [--dir DIR]

``--dir`` must be on the disk the daemon's state would live on: on tmpfs an fsync is free.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import tempfile
import threading
import time
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

from signer.audit.log import AuditEvent, AuditLog, Outcome, entry_hash  # noqa: E402

EVENT = {
    "time": 1764630000.123456,
    "principal": "spiffe://example.org/ci",
    "operation": "sign",
    "key_id": "a" * 64,
    "role": "targets",
    "repository": "",
    "payload_sha256": "b" * 64,
    "outcome": "allowed",
    "code": "OK",
    "detail": "",
    "request_id": "3f1c2a9e-0d57-4c1e-9a51-6f0e1b2c3d4e",
}


def _event(i: int) -> AuditEvent:
    return AuditEvent("bench", "sign", Outcome.ALLOWED, "a" * 64, "targets", payload_sha256=f"{i}")


def run(
    directory: Path, synchronous: str, callers: int, mode: str, seconds: float, linger: float
) -> dict[str, float]:
    path = directory / f"audit-{synchronous}-{callers}-{mode}-{linger}.db"
    audit = AuditLog(path, synchronous=synchronous, linger_seconds=linger)
    latencies: list[float] = []
    stop = time.monotonic() + seconds
    try:
        if mode == "threads":

            def caller() -> None:
                mine = []
                i = 0
                while time.monotonic() < stop:
                    t = time.perf_counter()
                    audit.record(_event(i))
                    mine.append(time.perf_counter() - t)
                    i += 1
                latencies.extend(mine)

            threads = [threading.Thread(target=caller) for _ in range(callers)]
            started = time.monotonic()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        else:

            async def task() -> None:
                i = 0
                while time.monotonic() < stop:
                    t = time.perf_counter()
                    await audit.record_async(_event(i))
                    latencies.append(time.perf_counter() - t)
                    i += 1

            async def main() -> None:
                await asyncio.gather(*(task() for _ in range(callers)))

            started = time.monotonic()
            asyncio.run(main())
        elapsed = time.monotonic() - started
    finally:
        audit.close()
    return {
        "commits/s": audit.commits / elapsed,
        "entries/commit": audit.committed_entries / max(1, audit.commits),
        "entries/s": audit.committed_entries / elapsed,
        "latency_ms": 1000 * sum(latencies) / max(1, len(latencies)),
    }


def hash_cost() -> tuple[float, float]:
    """us per entry: the old ``json.dumps`` per call against the cached encoder."""

    def old(prev: str, seq: int, event: dict[str, object]) -> str:
        body = {k: event[k] for k in sorted(event) if k not in ("seq", "prev_hash", "hash")}
        material = json.dumps([prev, seq, body], sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(material.encode()).hexdigest()

    assert old("c" * 64, 7, EVENT) == entry_hash("c" * 64, 7, EVENT)
    n = 50_000
    t_old = min(timeit.repeat(lambda: old("c" * 64, 7, EVENT), number=n, repeat=5)) / n
    t_new = min(timeit.repeat(lambda: entry_hash("c" * 64, 7, EVENT), number=n, repeat=5)) / n
    return t_old * 1e6, t_new * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--dir", help="where the databases go (default: a temp dir in bench/)")
    parser.add_argument("--linger", type=float, default=0.0002, help="AuditLog linger_seconds")
    args = parser.parse_args()
    base = Path(args.dir) if args.dir else ROOT / "bench"
    with tempfile.TemporaryDirectory(dir=base, prefix=".audit-bench-") as tmp:
        print(f"{'sync':7} {'mode':8} {'callers':>7} {'linger':>7} {'commits/s':>10} "
              f"{'entries/commit':>15} {'entries/s':>10} {'latency ms':>11}")  # fmt: skip
        for mode in ("threads", "asyncio"):
            for callers in (1, 16):
                for synchronous in ("NORMAL", "FULL"):
                    lingers = (0.0, args.linger) if callers > 1 else (args.linger,)
                    for linger in lingers:
                        r = run(Path(tmp), synchronous, callers, mode, args.seconds, linger)
                        print(
                            f"{synchronous:7} {mode:8} {callers:7d} {linger * 1e6:5.0f}us "
                            f"{r['commits/s']:10.0f} {r['entries/commit']:15.1f} "
                            f"{r['entries/s']:10.0f} {r['latency_ms']:11.2f}"
                        )
    old, new = hash_cost()
    print(f"entry hash: {old:.1f} us (json.dumps per call) -> {new:.1f} us (cached encoder)")


if __name__ == "__main__":
    main()
