"""Benchmark: a TUF repository with 10,000 targets, built and published through signerd.

Starts a real SoftHSM token and signerd (as the tests do), creates the repository with
``tuf-repo``'s core (keys created in the daemon), adds N target files, publishes, then
changes a few targets and publishes again. ngclient then verifies the result. Prints the
time of each phase and the signatures and signing round trips publishing needed.

Then, side by side in the same run: a plain python-tuf script doing the same publish with
its keys in memory (no daemon, no staging), and ``adopt`` of the 10,000-target repository
that script built, followed by the rotation of every role into the daemon.

    python bench/bench_repo.py [--targets 10000] [--bins 256] [--size 1024] [--no-compare]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "clients"), str(ROOT / "tests")]

from harness import running_daemon  # noqa: E402
from signer_client.repo import (  # noqa: E402
    DaemonKeys,
    Repository,
    RepoStore,
    RoleSpec,
    collect_files,
    verify,
)
from signer_client.repo.repository import TOP_LEVEL  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=10_000)
    parser.add_argument("--bins", type=int, default=256, help="hash bins (0: none)")
    parser.add_argument("--size", type=int, default=1024, help="bytes per target file")
    parser.add_argument("--changes", type=int, default=100, help="targets changed afterwards")
    parser.add_argument("--no-compare", action="store_true", help="skip python-tuf and adopt")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-repo-") as tmp_name:
        tmp = Path(tmp_name)
        with running_daemon(tmp / "signerd", clients=["admin"]) as daemon:
            cfg = daemon.client_config("admin", timeout=60.0)
            conf = tmp / "client.toml"
            conf.write_text(
                f'address = "{cfg.address}"\nca = "{cfg.ca}"\ncert = "{cfg.cert}"\n'
                f'key = "{cfg.key}"\ntimeout = 60.0\n'
            )
            os.environ["SIGNER_CLIENT_CONFIG"] = str(conf)
            keys = DaemonKeys(daemon.client("admin", timeout=60.0))
            ours = run(args, tmp, keys)
            if not args.no_compare and args.bins:
                from bench_repo_plain import compare

                compare(args, tmp, keys, ours)


def run(args: argparse.Namespace, tmp: Path, keys: DaemonKeys) -> list[tuple[str, float, str]]:
    files = tmp / "files"
    for i in range(args.targets):
        path = files / f"d{i % 100:02d}" / f"target-{i:05d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(args.size))
    store = RepoStore(tmp / "repo")
    phases: list[tuple[str, float, str]] = []

    t = time.perf_counter()
    roles = {role: RoleSpec([keys.create(role)]) for role in TOP_LEVEL}
    repo = Repository(store)
    repo.init(roles)
    if args.bins:
        repo = Repository(store)
        repo.delegate_hash_bins("bins", args.bins, [keys.create("bins")])
        result = repo.publish()
        phases.append(("init + delegate", time.perf_counter() - t, _stats(result)))
    else:
        phases.append(("init", time.perf_counter() - t, ""))

    t = time.perf_counter()
    repo = Repository(store)
    targets = collect_files([files])
    counts = repo.add_targets(targets)
    phases.append((f"add {len(targets)} targets", time.perf_counter() - t, f"{len(counts)} roles"))

    t = time.perf_counter()
    result = repo.publish()
    phases.append(("publish", time.perf_counter() - t, _stats(result)))

    t = time.perf_counter()
    repo = Repository(store)
    changed = targets[: args.changes]
    for _, local in changed:
        local.write_bytes(os.urandom(args.size))
    counts = repo.add_targets(changed)
    result = repo.publish()
    phases.append(
        (
            f"change {len(changed)} + publish",
            time.perf_counter() - t,
            f"{len(counts)} roles, {_stats(result)}",
        )
    )

    t = time.perf_counter()
    sample = [targets[0][0], targets[len(targets) // 2][0], targets[-1][0]]
    verify((store.metadata_dir / "1.root.json").read_bytes(), sample, directory=store.path)
    phases.append(("ngclient refresh + 3 downloads", time.perf_counter() - t, ""))

    width = max(len(name) for name, _, _ in phases)
    print(f"{args.targets} targets of {args.size} bytes, {args.bins} hash bins, ECDSA P-256")
    for name, seconds, note in phases:
        print(f"  {name:<{width}}  {seconds:7.2f} s  {note}")
    size = sum(p.stat().st_size for p in store.metadata_dir.iterdir())
    print(
        f"  metadata on disk: {size / 1e6:.1f} MB in {len(list(store.metadata_dir.iterdir()))} files"
    )
    return phases


def _stats(result: object) -> str:
    stats = result.stats  # type: ignore[attr-defined]
    return f"{stats.signatures} signatures in {stats.round_trips} signing round trip(s)"


if __name__ == "__main__":
    main()
