"""The supervisor imports only what supervising needs: no gRPC, token, cryptography or
signing code (those are its workers'), so it stays small (docs/performance.md, "Idle
memory"). Read from outside the running daemon: /proc/PID/maps and /proc/PID/status."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import child_pids, free_port, running_daemon

# Shared objects that only a worker loads. Every worker maps each of them (checked, so a
# renamed file cannot make the supervisor's check pass by matching nothing).
WORKER_ONLY = {
    "grpc": "/grpc/_cython/cygrpc.",
    "python-pkcs11": "/pkcs11/_pkcs11.",
    "SoftHSM": "/libsofthsm2.so",
    "uvloop": "/uvloop/loop.",
    "cryptography": "/cryptography/hazmat/bindings/_rust.",
    "sqlite3": "/_sqlite3.",
}
# The supervisor's RSS measured 16 MiB (Python 3.11, 2 workers; 25 MiB with [metrics], its
# prometheus_client and HTTP server; 54 MiB when it imported the serving code): about twice
# that leaves room for other builds, not for importing it all again.
SUPERVISOR_RSS_MIB = 36

# Python modules the supervisor must not import (pure Python ones leave no trace in maps).
NOT_IN_SUPERVISOR = (
    "grpc",
    "grpc_health",
    "grpc_reflection",
    "google.protobuf",
    "pkcs11",
    "uvloop",
    "cryptography",
    "tuf",
    "securesystemslib",
    "sqlite3",
    "sqlite_utils",
    "psycopg",
    "prometheus_client",  # unless [metrics] is on
    "signer.server",
    "signer.app",
    "signer.pipeline",
    "signer.service",
    "signer.token",
    "signer.keys",
    "signer.registry",
    "signer.identity",
    "signer.audit",
    "signer.storage.sqlite",
    "signer.storage.postgresql",
    "signer.storage.records",
    "signer_api",
    "signer_client",
    "multiprocessing",  # its spawn start method adds a process (the resource tracker)
)

POLICY = """
[groups]
admins = ["admin"]

[[rules]]
principals = ["group:admins"]
operations = ["create", "read", "sign", "sign-raw"]

[rate_limits]
"*" = { rate = 1000.0, burst = 1000 }

[tuf]
max_expiry_days = { timestamp = 1 }
"""
CONFIGURATIONS = ("make run", "policy file", "metrics")


def _options(configuration: str) -> dict[str, str]:
    """The daemon's options: as scripts/dev-up.sh writes them (no policy file, no
    metrics), with a policy file (the supervisor validates it), or with [metrics] on (the
    supervisor serves the workers' values, with prometheus_client)."""
    if configuration == "policy file":
        return {"policy": POLICY}
    if configuration == "metrics":
        return {"extra_config": f'[metrics]\nlisten = "127.0.0.1:{free_port()}"\n'}
    return {}


pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def _mapped(pid: int) -> set[str]:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return {name for name, needle in WORKER_ONLY.items() if needle in maps}


@pytest.mark.parametrize("configuration", CONFIGURATIONS)
def test_the_supervisor_maps_no_worker_library_and_stays_small(
    tmp_path: Path, configuration: str
) -> None:
    with running_daemon(tmp_path / "d", workers=2, **_options(configuration)) as daemon:
        assert daemon.proc is not None
        supervisor = daemon.proc.pid
        with daemon.client() as client:
            key = client.create_key("memory")
            # New connections until both workers signed (SO_REUSEPORT spreads connections).
            for i in range(16):
                with daemon.client() as fresh:
                    fresh.sign_digest(key.key_id, hashlib.sha256(b"%d" % i).digest())
        deadline = time.monotonic() + 10
        while len(workers := child_pids(supervisor)) != 2:
            assert time.monotonic() < deadline, f"children of {supervisor}: {workers}"
            time.sleep(0.1)
        for worker in workers:
            assert b"signer.worker" in Path(f"/proc/{worker}/cmdline").read_bytes()

        for worker in workers:
            assert _mapped(worker) == set(WORKER_ONLY), f"worker {worker}: {_mapped(worker)}"
        assert _mapped(supervisor) == set(), "the supervisor loaded worker-only libraries"
        rss = _rss_mib(supervisor)
        assert rss < SUPERVISOR_RSS_MIB, f"supervisor RSS {rss:.1f} MiB"

        with daemon.client() as client:  # still serving
            assert client.sign_digest(key.key_id, hashlib.sha256(b"after").digest()).signature
        assert daemon.stop() == 0
        assert "Traceback" not in daemon.log(), daemon.log()


def test_the_supervisor_path_imports_no_serving_module() -> None:
    """What `signerd serve` imports before it starts a worker: the CLI with its parser,
    the supervisor, and the policy file's parser (the supervisor validates the file)."""
    script = (
        "import sys\n"
        "import signer.cli, signer.supervisor\n"
        "signer.cli.build_parser()\n"
        "from signer.policy.file import FilePolicy\n"
        "FilePolicy.parse(sys.argv[1], 'policy.toml')\n"
        f"bad = {NOT_IN_SUPERVISOR!r}\n"
        "print(sorted(m for m in sys.modules if (m + '.').startswith(tuple(b + '.' for b in bad))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, POLICY], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout
