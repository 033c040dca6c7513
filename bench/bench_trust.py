"""Benchmark: sign 100 tags in one publish, ``signer-trust`` against the notary CLI.

Everything runs on this machine in one run: signerd (SoftHSM2 token, mTLS, audited),
Debian's notary-server (memory storage) whose trust service is that signerd, and Debian's
docker-registry (plain HTTP, anonymous) holding the tags. Each round, on fresh tag names
(so every publish adds 100 new targets), interleaved:

* ours: ``signer-trust sign GUN:t1 ... GUN:t100`` as a build-farm signer created with
  ``signer add ci GUN --create-key``: one process that resolves every tag in the registry
  (HEAD per tag), signs ``targets/releases`` and ``targets/ci`` in the token and publishes
  once. Every key is in the token; notary-server signs snapshot and timestamp with signerd.
  The registry resolves are also timed alone, in this process, with the client's own
  ``RegistryClient``, and subtracted ("ours - registry").
* notary: ``notary add GUN tN FILE`` x100 (one process each; notary hashes a local file,
  no registry) then ``notary publish GUN``, with local keys (root, targets and snapshot in
  the trust dir behind passphrases; notary-server signs timestamp).
* a one-tag publish with no registry on either side: ``signer-trust sign GUN:t
  --digest --size`` against ``notary add`` x1 + ``notary publish``.

It prints the wall time of each (median and best over the rounds) and the ratio
ours / notary (lower is better for ours), then checks with ``notary list`` from a fresh
trust dir that both repositories hold every tag.

    python bench/bench_trust.py [--tags 100] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "clients"), str(ROOT / "tests")]

from notary_harness import (  # noqa: E402
    NOTARY_SERVER_PRINCIPAL,
    NotaryCLI,
    NotaryServer,
    require,
    start_notary_server,
    stop_notary_server,
)
from registry_harness import PushedImage, Registry, push_image, start_registry  # noqa: E402

from harness import Daemon, running_daemon  # noqa: E402
from signer_client.trust.registry import RegistryClient, parse_reference  # noqa: E402

SIGNER = "ci"  # the build farm's principal and signer name
POLICY = f"""
[[rules]]
principals = ["{NOTARY_SERVER_PRINCIPAL}"]
operations = ["create", "sign", "read"]
keys = {{ roles = ["timestamp", "snapshot"], repositories = ["*"] }}

[[rules]]
principals = ["admin"]
operations = ["create", "read", "sign", "certify"]
keys = {{ roles = ["root", "targets", "snapshot", "targets/*"], repositories = ["*"] }}

[[rules]]
principals = ["{SIGNER}"]
operations = ["read", "sign"]
keys = {{ roles = ["targets/releases", "targets/{SIGNER}"], repositories = ["*"] }}
"""
ROWS = (
    ("ours", "signer-trust sign, {n} tags (registry resolves)"),
    ("ours-reg", "  of which registry resolves (in-process)"),
    ("ours-net", "  ours - registry"),
    ("notary", "notary add x{n} + publish (local file)"),
    ("notary-add", "  of which notary add x{n}"),
    ("notary-pub", "  of which notary publish"),
    ("ours-1", "signer-trust sign --digest --size, 1 tag"),
    ("notary-1", "notary add x1 + publish"),
    ("startup", "signer-trust --help (Python start-up)"),
)


class Trust:
    """``python -m signer_client.trust.cli`` against the stack, as one principal."""

    def __init__(self, root: Path, daemon: Daemon, server: NotaryServer, principal: str) -> None:
        config = daemon.client_config(principal)
        path = root / f"signer-client-{principal}.toml"
        path.write_text(
            f'address = "{config.address}"\nca = "{config.ca}"\n'
            f'cert = "{config.cert}"\nkey = "{config.key}"\n'
        )
        self.base = [
            sys.executable,
            "-m",
            "signer_client.trust.cli",
            "-s",
            server.url,
            "--tlscacert",
            str(daemon.pki / "ca.pem"),
            "-d",
            str(root / f"trust-{principal}"),
            "--signer-config",
            str(path),
            "--registry-plain-http",
        ]
        paths = [str(ROOT), str(ROOT / "clients"), os.environ.get("PYTHONPATH", "")]
        self.env = dict(os.environ, PYTHONPATH=":".join(p for p in paths if p))

    def __call__(self, *args: str) -> str:
        done = subprocess.run(
            [*self.base, *args], env=self.env, capture_output=True, text=True, timeout=300
        )
        if done.returncode != 0:
            shown = " ".join(args[:4]) + (" ..." if len(args) > 4 else "")
            raise SystemExit(
                f"`signer-trust {shown}` failed ({done.returncode}):\n"
                f"--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
            )
        return done.stdout


def tag(registry: Registry, image: PushedImage, repository: str, name: str) -> None:
    """Point ``repository:name`` at the pushed image's manifest (a manifest PUT)."""
    request = urllib.request.Request(
        f"{registry.url}/v2/{repository}/manifests/{name}",
        data=image.manifest,
        method="PUT",
        headers={"Content-Type": image.media_type},
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        if resp.status != 201:
            raise SystemExit(f"registry PUT {repository}:{name}: HTTP {resp.status}")


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@dataclass
class Bench:
    registry: Registry
    image: PushedImage
    ci: Trust
    notary: NotaryCLI
    ours_gun: str
    theirs_gun: str
    manifest: Path
    times: dict[str, list[float]]

    def ours(self, r: int, names: list[str]) -> None:
        refs = [f"{self.ours_gun}:{name}" for name in names]
        resolver = RegistryClient(scheme="http")  # what `sign` does: one client, every tag

        def resolve_all() -> None:
            for ref in refs:
                assert resolver.resolve(parse_reference(ref)).digest == self.image.digest

        t = timed(lambda: self.ci("sign", *refs))
        reg = timed(resolve_all)
        self.times["ours"].append(t)
        self.times["ours-reg"].append(reg)
        self.times["ours-net"].append(t - reg)
        one = f"{self.ours_gun}:r{r}-one"
        digest, size = self.image.digest, str(self.image.size)
        self.times["ours-1"].append(
            timed(lambda: self.ci("sign", one, "--digest", digest, "--size", size))
        )

    def notary_side(self, r: int, names: list[str]) -> None:
        gun, file = self.theirs_gun, str(self.manifest)

        def add_all() -> None:
            for name in names:
                self.notary("add", gun, name, file)

        def one() -> None:
            self.notary("add", gun, f"r{r}-one", file)
            self.notary("publish", gun)

        add = timed(add_all)
        pub = timed(lambda: self.notary("publish", gun))
        self.times["notary-add"].append(add)
        self.times["notary-pub"].append(pub)
        self.times["notary"].append(add + pub)
        self.times["notary-1"].append(timed(one))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tags", type=int, default=100, help="tags per publish")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    args = ap.parse_args()
    require("notary-server")
    require("notary")
    n = args.tags

    times: dict[str, list[float]] = {key: [] for key, _ in ROWS}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with running_daemon(
            root / "signerd", clients=["admin", NOTARY_SERVER_PRINCIPAL, SIGNER], policy=POLICY
        ) as daemon:
            server = start_notary_server(root, daemon, "ecdsa")
            registry = start_registry(root / "registry")
            try:
                ours_repo, theirs_repo = "bench/ours", "bench/notary"
                ours_gun = f"{registry.host}/{ours_repo}"
                theirs_gun = f"{registry.host}/{theirs_repo}"
                image = push_image(registry, ours_repo, "base")
                manifest = root / "manifest.json"  # what `notary add` hashes
                manifest.write_bytes(image.manifest)

                admin = Trust(root, daemon, server, "admin")
                ci = Trust(root, daemon, server, SIGNER)
                admin("init", ours_gun)
                admin("signer", "add", SIGNER, ours_gun, "--create-key")
                ci("sign", f"{ours_gun}:warm", "--digest", image.digest, "--size", str(image.size))

                notary = NotaryCLI(server, root / "trust-notary", daemon.pki / "ca.pem", lambda: "")
                notary("init", theirs_gun)
                notary("publish", theirs_gun)
                notary("add", theirs_gun, "warm", str(manifest))
                notary("publish", theirs_gun)

                bench = Bench(registry, image, ci, notary, ours_gun, theirs_gun, manifest, times)
                for r in range(1, args.rounds + 1):
                    names = [f"r{r}-t{i}" for i in range(1, n + 1)]
                    for name in names:
                        tag(registry, image, ours_repo, name)
                    # alternate which side goes first, so neither always runs on a warm box
                    if r % 2:
                        bench.ours(r, names)
                        bench.notary_side(r, names)
                    else:
                        bench.notary_side(r, names)
                        bench.ours(r, names)
                    times["startup"].append(timed(lambda: ci("--help")))

                fresh = NotaryCLI(server, root / "trust-fresh", daemon.pki / "ca.pem", lambda: "")
                expected = args.rounds * (n + 1) + 1
                for gun in (ours_gun, theirs_gun):
                    listed = [
                        line.split()
                        for line in fresh("list", gun).splitlines()
                        if len(line.split()) == 4
                    ]
                    tags = {p[0] for p in listed if p[1] == image.digest.removeprefix("sha256:")}
                    if len(tags) != expected:
                        raise SystemExit(
                            f"{gun}: notary list shows {len(tags)} tags, not {expected}"
                        )
            finally:
                registry.stop()
                stop_notary_server(server)

    print(
        f"one publish of {n} new tags; signerd: SoftHSM2, audited, mTLS; notary-server: "
        f"memory storage, signer = signerd; {os.cpu_count()} cores; {args.rounds} interleaved "
        f"rounds, fresh tags each"
    )
    head = f"{'':48} | {'median s':>8} {'best s':>7} | {'all rounds (s)':<20}"
    print(head)
    print("-" * len(head))
    for key, label in ROWS:
        values = times[key]
        label = label.format(n=n)
        runs = " ".join(f"{v:.2f}" for v in values)
        print(f"{label:48} | {statistics.median(values):8.2f} {min(values):7.2f} | {runs}")
    print("-" * len(head))

    def ratio(a: str, b: str) -> str:
        return f"{statistics.median(times[a]) / statistics.median(times[b]):.2f}"

    print(f"ratio ours / notary, {n} tags (medians): {ratio('ours', 'notary')}")
    print(f"ratio (ours - registry) / notary, {n} tags: {ratio('ours-net', 'notary')}")
    print(f"ratio ours / notary, 1 tag, no registry: {ratio('ours-1', 'notary-1')}")
    print(
        "asymmetry: ours resolves every tag in the registry (HEAD each); notary hashes a local "
        "file per tag and needs one process per tag"
    )
    print("verified: notary list (fresh trust dir) shows every tag in both repositories")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
