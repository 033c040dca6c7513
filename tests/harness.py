"""Test harness: a real SoftHSM2 token in a temp dir, a real dev PKI, a real daemon process.

Nothing is mocked. Each daemon gets its own SOFTHSM2_CONF, token, state dir and port.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from signer.devpki import file_stem, make_dev_pki
from signer_client import ClientConfig, SignerClient

ROOT = Path(__file__).resolve().parent.parent
PIN = "test-pin-4711"
SO_PIN = "test-so-pin-0815"
MODULE = "/usr/lib/softhsm/libsofthsm2.so"


# A script that holds an exclusive lock on a SQLite file (argv[1]) for argv[2] seconds.
HOLD_LOCK = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("ROLLBACK")
"""


def proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after "(comm)": state, ppid, ... (None: gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def child_pids(pid: int) -> list[int]:
    """The live (not zombie) child processes of ``pid``, from /proc: a daemon's workers."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = proc_stat(int(entry.name))
            if fields is not None and fields[0] != "Z" and int(fields[1]) == pid:
                found.append(int(entry.name))
    return sorted(found)


def workers_of(supervisor: int) -> list[int]:
    """The worker processes (``python -m signer.worker ...``) among ``supervisor``'s children."""
    found = []
    for pid in child_pids(supervisor):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"signer.worker" in cmdline:
            found.append(pid)
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def create_token(directory: Path, label: str = "tuf-signer") -> dict[str, str]:
    """A fresh SoftHSM2 token; returns the environment that selects it."""
    env = dict(os.environ, SIGNER_PIN=PIN, SIGNER_SO_PIN=SO_PIN)
    subprocess.run(
        [str(ROOT / "softhsm" / "create-token.sh"), str(directory), label],
        check=True,
        env=env,
        capture_output=True,
    )
    return {"SOFTHSM2_CONF": str(directory / "softhsm2.conf"), "SIGNER_PIN": PIN}


@dataclass
class Daemon:
    """A running ``signerd serve`` with its token, PKI and state under ``root``."""

    root: Path
    port: int
    env: dict[str, str]
    label: str = "tuf-signer"
    workers: int = 1
    policy: str | bytes | None = None  # policy TOML (bytes: as they are), next to the config
    extra_config: str = ""
    server_options: str = ""  # extra lines for the [server] table
    state_options: str = ""  # extra lines for the [state] table (a shared database)
    clients: list[str] = field(default_factory=lambda: ["admin"])
    module: str = MODULE  # the PKCS#11 module (a test's shim around SoftHSM, say)
    token_options: str = ""  # extra lines for the [token] table
    proc: subprocess.Popen[bytes] | None = None

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def config_path(self) -> Path:
        return self.root / "signer.toml"

    @property
    def log_path(self) -> Path:
        return self.root / "signerd.log"

    @property
    def address(self) -> str:
        return f"localhost:{self.port}"

    def write_config(self) -> None:
        make_dev_pki(self.pki, self.clients)
        policy_line = ""
        if self.policy is not None:
            path = self.root / "policy.toml"
            if isinstance(self.policy, bytes):
                path.write_bytes(self.policy)
            else:
                path.write_text(self.policy)
            policy_line = '[policy]\nfile = "policy.toml"\n'
        self.config_path.write_text(
            f"""[server]
listen = "127.0.0.1:{self.port}"
workers = {self.workers}
grace_seconds = 5
{self.server_options}

[tls]
ca = "pki/ca.pem"
cert = "pki/server.pem"
key = "pki/server-key.pem"

[token]
module = "{self.module}"
label = "{self.label}"
pin_env = "SIGNER_PIN"
probe_interval = 0.5
{self.token_options}

[state]
dir = "state"
{self.state_options}

{policy_line}
{self.extra_config}
"""
        )

    def start(self, wait: bool = True) -> None:
        self.write_config()
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "signer.cli", "serve", "--config", str(self.config_path)],
            env=dict(os.environ, **self.env),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.root,
        )
        if wait:
            self.wait_serving()

    def wait_serving(
        self, timeout: float = 30.0, want: int = health_pb2.HealthCheckResponse.SERVING
    ) -> None:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"signerd exited ({self.proc.returncode}):\n{self.log()}")
            try:
                if self.health() == want:
                    return
            except grpc.RpcError as exc:
                last = exc
            time.sleep(0.1)
        raise TimeoutError(f"signerd not in state {want} after {timeout}s ({last}):\n{self.log()}")

    def health(self, service: str = "") -> int:
        with self.channel("admin") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            return int(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2).status)

    def wait_log(self, text: str, timeout: float = 20.0) -> str:
        """Wait until the daemon's log contains ``text`` (work done after start-up)."""
        deadline = time.monotonic() + timeout
        while text not in (log := self.log()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{text!r} not in the daemon log after {timeout}s:\n{log}")
            time.sleep(0.1)
        return log

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def client_config(self, name: str = "admin", **overrides: Any) -> ClientConfig:
        stem = "client-" + file_stem(name)
        if not (self.pki / f"{stem}.pem").exists():
            make_dev_pki(self.pki, [name])
        values: dict[str, Any] = {
            "address": self.address,
            "ca": self.pki / "ca.pem",
            "cert": self.pki / f"{stem}.pem",
            "key": self.pki / f"{stem}-key.pem",
            "timeout": 10.0,
            "retries": 0,
        }
        values.update(overrides)
        return ClientConfig(**values)

    def client(self, name: str = "admin", **overrides: Any) -> SignerClient:
        return SignerClient(self.client_config(name, **overrides))

    def fresh_client(self, name: str = "admin", **overrides: Any) -> SignerClient:
        """A client on a connection of its own (no subchannel shared with other channels):
        with several workers, the kernel picks the worker that serves it. ``overrides``:
        as for ``client_config`` (another certificate, say)."""
        cfg = self.client_config(name, **overrides)
        creds = grpc.ssl_channel_credentials(
            cfg.ca.read_bytes(), cfg.key.read_bytes(), cfg.cert.read_bytes()
        )
        channel = grpc.secure_channel(
            cfg.address, creds, options=[("grpc.use_local_subchannel_pool", 1)]
        )
        return SignerClient(cfg, channel=channel)

    def channel(self, name: str = "admin") -> grpc.Channel:
        from signer_client.client import secure_channel

        return secure_channel(self.client_config(name))

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def signerd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``signerd ARGS`` as an operator types it (this interpreter, the source tree)."""
    return subprocess.run(
        [sys.executable, "-m", "signer.cli", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=f"{ROOT}:{ROOT / 'clients'}", **(env or {})),
        cwd=ROOT,
        timeout=120,
        check=False,
    )


@contextmanager
def running_daemon(root: Path, **kwargs: Any) -> Iterator[Daemon]:
    """Token + PKI + daemon under ``root``; stopped (and its log kept) afterwards."""
    root.mkdir(parents=True, exist_ok=True)
    label = kwargs.pop("label", "tuf-signer")
    env = create_token(root / "hsm", label)
    daemon = Daemon(root=root, port=free_port(), env=env, label=label, **kwargs)
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


_READ_TOKEN = r"""
import json, os, sys, pkcs11
from pkcs11 import Attribute, ObjectClass
from pkcs11 import exceptions as p11
lib = pkcs11.lib(sys.argv[1])
session = lib.get_token(token_label=sys.argv[2]).open(user_pin=os.environ["SIGNER_PIN"])
out = []
for cls, name in ((ObjectClass.PRIVATE_KEY, "private"), (ObjectClass.PUBLIC_KEY, "public")):
    for obj in session.get_objects({Attribute.CLASS: cls}):
        row = {"class": name, "id": bytes(obj[Attribute.ID]).hex(), "label": obj[Attribute.LABEL]}
        for attr in ("SENSITIVE", "EXTRACTABLE", "PRIVATE", "TOKEN", "ALWAYS_SENSITIVE",
                     "NEVER_EXTRACTABLE", "SIGN", "LOCAL"):
            try:
                row[attr.lower()] = bool(obj[getattr(Attribute, attr)])
            except p11.PKCS11Error as exc:
                row[attr.lower()] = type(exc).__name__
        if name == "private":
            try:
                obj[Attribute.PRIVATE_EXPONENT if obj.key_type.name == "RSA" else Attribute.VALUE]
                row["value_readable"] = True
            except p11.PKCS11Error as exc:
                row["value_readable"] = type(exc).__name__
        out.append(row)
print(json.dumps(out))
"""


def read_token_objects(daemon: Daemon) -> list[dict[str, Any]]:
    """Every key object on the daemon's token with its attributes, read by a separate
    process straight through PKCS#11 (not through the daemon)."""
    import json

    result = subprocess.run(
        [sys.executable, "-c", _READ_TOKEN, MODULE, daemon.label],
        env=dict(os.environ, **daemon.env),
        capture_output=True,
        text=True,
        check=True,
    )
    return list(json.loads(result.stdout))


def object_id_of(daemon: Daemon, key_id: str) -> str:
    """The token object id the registry maps ``key_id`` to."""
    import sqlite3

    with sqlite3.connect(daemon.state / "keys.db") as db:
        row = db.execute("SELECT object_id FROM keys WHERE key_id = ?", (key_id,)).fetchone()
    assert row, f"key {key_id} not in the registry"
    return str(row[0])


def audit_rows(
    daemon: Daemon, where: str = "1", args: tuple[Any, ...] = ()
) -> list[dict[str, Any]]:
    import sqlite3

    with sqlite3.connect(daemon.state / "audit.db") as db:
        db.row_factory = sqlite3.Row
        return [
            dict(r) for r in db.execute(f"SELECT * FROM audit WHERE {where} ORDER BY seq", args)
        ]


def pull_token(daemon: Daemon) -> Path:
    """Move the daemon's SoftHSM token directory away: what a pulled device looks like."""
    tokens = Path(daemon.env["SOFTHSM2_CONF"]).parent / "tokens"
    away = tokens.with_name("tokens.pulled")
    tokens.rename(away)
    return away


def reinsert_token(away: Path) -> None:
    away.rename(away.with_name("tokens"))


@contextmanager
def small_filesystem(mountpoint: Path, size: str, mode: str = "0700") -> Iterator[Path]:
    """``mountpoint`` as its own tmpfs of ``size`` (root only; the test is skipped where
    mounting is impossible); unmounted afterwards."""
    import pytest

    mountpoint.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode={mode}", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def fill_filesystem(directory: Path) -> Path:
    """Write a file until the filesystem has no byte left; returns the filler file."""
    import errno

    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (1 << 20, 1 << 16, 1 << 12, 512, 1):
            data = b"\0" * chunk
            while True:
                try:
                    os.write(fd, data)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    return filler
