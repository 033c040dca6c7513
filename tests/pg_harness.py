"""A throw-away PostgreSQL cluster for the tests: initdb in a temp dir, loopback, stopped after.

PostgreSQL refuses to run as root, so the cluster belongs to an unprivileged user
(``pgtest``, created if missing when the tests run as root). It listens on 127.0.0.1 at a
free port and on a unix socket in its own directory; the database ``signer`` belongs to
role ``signer`` with a password, which the daemon reads from a file (never its config).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

BIN = Path("/usr/lib/postgresql/15/bin")
USER = "pgtest"


def available() -> bool:
    return (BIN / "initdb").exists()


@dataclass
class Cluster:
    data: Path
    socket_dir: Path
    port: int
    password: str
    database: str = "signer"
    role: str = "signer"
    log: Path | None = None

    @property
    def url(self) -> str:
        """The URL without the password (that goes in a file or an env var)."""
        return f"postgresql://{self.role}@127.0.0.1:{self.port}/{self.database}"

    def dsn(self, database: str | None = None) -> str:
        return (
            f"host=127.0.0.1 port={self.port} dbname={database or self.database} "
            f"user={self.role} password={self.password}"
        )

    def _as_user(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = list(args)
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", USER, "--", *cmd]
        return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=120)

    def start(self) -> None:
        self._as_user(
            str(BIN / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-w",
            "-t",
            "60",
            "-o",
            f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        self._as_user(
            str(BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop", check=False
        )

    def restart(self) -> None:
        self.stop()
        self.start()

    def psql(self, sql: str, database: str = "postgres") -> str:
        done = self._as_user(
            str(BIN / "psql"),
            "-h",
            str(self.socket_dir),
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            database,
            "-v",
            "ON_ERROR_STOP=1",
            "-At",
            "-c",
            sql,
        )
        return done.stdout

    def fresh_database(self, name: str) -> str:
        """A new empty database owned by the signer role; its URL (without password)."""
        self.psql(f'CREATE DATABASE "{name}" OWNER {self.role}')
        return f"postgresql://{self.role}@127.0.0.1:{self.port}/{name}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ensure_user() -> None:
    if os.geteuid() != 0:
        return
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(
            ["useradd", "-r", "-M", "-s", "/usr/sbin/nologin", USER], check=True, timeout=60
        )


@contextlib.contextmanager
def running_cluster() -> Iterator[Cluster]:
    """initdb, start, create role and database; stop and remove everything afterwards."""
    _ensure_user()
    root = Path(tempfile.mkdtemp(prefix="signer-pg-"))
    os.chmod(root, 0o755)
    data, sockets = root / "data", root / "sock"
    sockets.mkdir()
    if os.geteuid() == 0:
        entry = pwd.getpwnam(USER)
        os.chown(root, entry.pw_uid, entry.pw_gid)
        os.chown(sockets, entry.pw_uid, entry.pw_gid)
    cluster = Cluster(data, sockets, _free_port(), secrets.token_hex(16), log=root / "pg.log")
    pwfile = root / "pw"
    pwfile.write_text(cluster.password)
    if os.geteuid() == 0:
        os.chown(pwfile, pwd.getpwnam(USER).pw_uid, -1)
    pwfile.chmod(0o600)
    try:
        cluster._as_user(
            str(BIN / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--pwfile",
            str(pwfile),
            "-E",
            "UTF8",
            "--no-sync",
        )
        with open(data / "postgresql.conf", "a") as conf:
            conf.write("fsync = on\nmax_connections = 200\nshared_buffers = 32MB\n")
        # The log file must be writable by the cluster's user.
        cluster.log.touch()  # type: ignore[union-attr]
        if os.geteuid() == 0:
            os.chown(cluster.log, pwd.getpwnam(USER).pw_uid, -1)  # type: ignore[arg-type]
        cluster.start()
        cluster.psql(f"CREATE ROLE {cluster.role} LOGIN PASSWORD '{cluster.password}'")
        cluster.psql(f"CREATE DATABASE {cluster.database} OWNER {cluster.role}")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if cluster.psql("SELECT 1", cluster.database).strip() == "1":
                break
            time.sleep(0.1)
        yield cluster
    finally:
        cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)
