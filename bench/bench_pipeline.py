"""Benchmark: the signing pipeline in-process, without gRPC, to see what each part costs.

A real SoftHSM token and the daemon's real app (registry, policy, guards, audit log with
``synchronous=FULL``), driven by N concurrent asyncio callers in this process. Prints
signatures/s, CPU per signature (user + system, this process and its threads: the fsync
of a commit is system time), and audit entries per commit, three ways:

* ``full``: the pipeline as the daemon runs it;
* ``no-audit``: the same with the audit commit replaced by a no-op (what the rest costs);
* ``blocking record()``: each request waits for ``AuditLog.record`` in a thread.

    python bench/bench_pipeline.py [--callers 8] [--requests 400] [--mode unary|batch]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "clients"), str(ROOT / "tests")]

from harness import MODULE, create_token, make_dev_pki  # noqa: E402

RAW_PAYLOAD = b"artefact sha256:" + bytes(range(48))


def build_app(root: Path):
    os.environ.update(create_token(root / "hsm"))
    make_dev_pki(root / "pki", ["admin"])
    (root / "signer.toml").write_text(
        '[server]\nlisten = "127.0.0.1:0"\n'
        '[tls]\nca = "pki/ca.pem"\ncert = "pki/server.pem"\nkey = "pki/server-key.pem"\n'
        f'[token]\nmodule = "{MODULE}"\nlabel = "tuf-signer"\n[state]\ndir = "state"\n'
    )
    from signer.app import SignerApp
    from signer.config import load_config

    app = SignerApp(load_config(root / "signer.toml"))
    app.open()
    return app


async def drive(app, items, callers: int, requests: int) -> tuple[float, float]:
    from signer.identity import Principal

    principal = Principal("admin", "cn", "bench")

    async def caller() -> None:
        for _ in range(requests):
            results = await app.pipeline.sign(principal, items)
            assert all(hasattr(r, "signature") for r in results)

    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(caller() for _ in range(callers)))
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--callers", type=int, default=8)
    ap.add_argument("--requests", type=int, default=400, help="per caller")
    ap.add_argument("--mode", choices=["unary", "batch"], default="unary")
    args = ap.parse_args()
    from signer.identity import Principal
    from signer.pipeline import SignInput

    with tempfile.TemporaryDirectory() as tmp:
        app = build_app(Path(tmp))
        key = app.keys.create(
            Principal("admin", "cn", "x"), "b", "ecdsa-sha2-nistp256", "timestamp"
        )
        if args.mode == "batch":
            digests = [hashlib.sha256(b"%d" % i).digest() for i in range(64)]
            items = [SignInput(key.key_id, digest=d) for d in digests]
        else:
            items = [SignInput(key.key_id, payload=RAW_PAYLOAD)]
        real_record = app.audit.record_async

        async def no_audit(*events):
            return list(range(len(events)))

        async def per_call(*events):
            return await asyncio.to_thread(app.audit.record, *events)

        print(
            f"pipeline bench: {args.mode}, {args.callers} callers x {args.requests} requests, "
            f"ECDSA P-256, {os.cpu_count()} cores"
        )
        print(f"{'audit':18} {'signs/s':>9} {'CPU us/sig':>11} {'entries/commit':>15}")
        for name, record in (
            ("full", real_record),
            ("no-audit", no_audit),
            ("blocking record()", per_call),
        ):
            app.audit.record_async = record
            asyncio.run(drive(app, items, args.callers, 5))  # warm up
            commits, entries = app.audit.commits, app.audit.committed_entries
            wall, cpu = asyncio.run(drive(app, items, args.callers, args.requests))
            sigs = args.callers * args.requests * len(items)
            done = app.audit.commits - commits
            per_commit = (app.audit.committed_entries - entries) / done if done else float("nan")
            print(f"{name:18} {sigs / wall:9.0f} {cpu * 1e6 / sigs:11.1f} {per_commit:15.1f}")
        app.audit.record_async = real_record
        app.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
