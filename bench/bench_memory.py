"""Idle memory of the daemon as `make run` configures it: a supervisor and 2 workers.

Starts a SoftHSM token and a real signerd (tests/harness.py: mutual TLS, SQLite state, no
policy file, no metrics listener, as scripts/dev-up.sh writes it), signs on every
worker, waits until it is idle, then reads from /proc, for the supervisor and each of its
children (the workers; multiprocessing's resource tracker too, in trees whose supervisor
started workers with multiprocessing): RSS (VmRSS), PSS and USS (smaps_rollup: Pss,
Private_Clean + Private_Dirty) and which heavy shared objects each maps.

    python bench/bench_memory.py [--workers 2] [--settle 3] [--runs 1] [--policy] [--metrics]

``--policy``: with a policy file (the supervisor validates it); ``--metrics``: with
``[metrics] listen`` (the supervisor serves the workers' values).
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "clients"), str(ROOT / "tests")]

from harness import child_pids, free_port, running_daemon  # noqa: E402

POLICY = """
[[rules]]
principals = ["admin"]
operations = ["create", "read", "sign", "sign-raw"]

[rate_limits]
"*" = { rate = 1000.0, burst = 1000 }
"""

# Shared objects that only a worker needs: a supervisor mapping one imported too much.
HEAVY = {
    "grpc": "cygrpc",
    "pkcs11": "_pkcs11",
    "softhsm": "libsofthsm2",
    "uvloop": "uvloop/loop",
    "cryptography": "_rust.abi3",
    "sqlite3": "_sqlite3",
    "protobuf": "_message",
}


def memory(pid: int) -> dict[str, float]:
    """RSS, PSS and USS in MiB (the kernel's "kB" are KiB)."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
    rollup = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value, *_ = line.split()
        rollup[name.rstrip(":")] = int(value)
    uss = rollup["Private_Clean"] + rollup["Private_Dirty"]
    return {"rss": rss / 1024, "pss": rollup["Pss"] / 1024, "uss": uss / 1024}


def heavy_maps(pid: int) -> list[str]:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return [name for name, needle in HEAVY.items() if needle in maps]


def role(pid: int) -> str:
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    return "resource tracker" if b"resource_tracker" in cmdline else "worker"


def measure(
    workers: int, settle: float, policy: bool, metrics: bool
) -> list[tuple[str, dict[str, float], list[str]]]:
    options: dict[str, str] = {}
    if policy:
        options["policy"] = POLICY
    if metrics:
        options["extra_config"] = f'[metrics]\nlisten = "127.0.0.1:{free_port()}"\n'
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_daemon(Path(tmp) / "d", workers=workers, **options) as daemon,
    ):
        assert daemon.proc is not None
        supervisor = daemon.proc.pid
        with daemon.client() as client:
            key = client.create_key("idle-memory")
        # One signature per connection until every worker has signed (SO_REUSEPORT
        # spreads connections): the token is open and the signing path loaded everywhere.
        for i in range(8 * workers):
            with daemon.client() as client:
                client.sign_digest(key.key_id, hashlib.sha256(b"%d" % i).digest())
        time.sleep(settle)
        rows = [("supervisor", memory(supervisor), heavy_maps(supervisor))]
        for pid in child_pids(supervisor):
            rows.append((role(pid), memory(pid), heavy_maps(pid)))
        return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--settle", type=float, default=3.0, help="idle seconds before reading")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--policy", action="store_true", help="with a policy file")
    parser.add_argument("--metrics", action="store_true", help="with [metrics] listen")
    args = parser.parse_args()
    runs = [measure(args.workers, args.settle, args.policy, args.metrics) for _ in range(args.runs)]
    print(f"{'process':18} {'RSS MiB':>8} {'PSS MiB':>8} {'USS MiB':>8}  heavy shared objects")
    for index, (name, _, maps) in enumerate(runs[0]):
        values = {
            k: statistics.median(run[index][1][k] for run in runs if index < len(run))
            for k in ("rss", "pss", "uss")
        }
        print(
            f"{name:18} {values['rss']:8.1f} {values['pss']:8.1f} {values['uss']:8.1f}  "
            f"{', '.join(maps) or '-'}"
        )


if __name__ == "__main__":
    main()
