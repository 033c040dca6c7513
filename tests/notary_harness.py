"""notary-server and the notary CLI for tests: start-up, HTTPS GETs, running the CLI.

Shared by the notary end-to-end test and the trust-metadata tests, which both drive the
real (Debian ``notary``) binaries against a notary-server whose signer is signerd.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from harness import Daemon, free_port
from signer.devpki import issue, load_ca

NOTARY_SERVER_PRINCIPAL = "notary-server"
PASSPHRASES = {
    "NOTARY_ROOT_PASSPHRASE": "root-pass-4711",
    "NOTARY_TARGETS_PASSPHRASE": "targets-pass-4711",
    "NOTARY_SNAPSHOT_PASSPHRASE": "snapshot-pass-4711",
    "NOTARY_DELEGATION_PASSPHRASE": "delegation-pass-4711",
}
CLI_TIMEOUT = 60


def require(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.fail(
            f"{binary} is not installed: the notary end-to-end test needs Debian's `notary` "
            "package (make deps, or apt-get install notary)",
            pytrace=False,
        )
    return path


@dataclass
class NotaryServer:
    root: Path
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def notary_server_config(root: Path, daemon: Daemon, port: int, algorithm: str) -> Path:
    pki = daemon.pki
    config = {
        "server": {
            "http_addr": f"127.0.0.1:{port}",
            "tls_cert_file": str(pki / "notary-server-tls.pem"),
            "tls_key_file": str(pki / "notary-server-tls-key.pem"),
        },
        "trust_service": {
            "type": "remote",
            "hostname": "localhost",  # a DNS name in signerd's server certificate
            "port": str(daemon.port),
            "tls_ca_file": str(pki / "ca.pem"),
            "tls_client_cert": str(pki / f"client-{NOTARY_SERVER_PRINCIPAL}.pem"),
            "tls_client_key": str(pki / f"client-{NOTARY_SERVER_PRINCIPAL}-key.pem"),
            "key_algorithm": algorithm,  # what notary-server asks CreateKey for
        },
        "storage": {"backend": "memory"},
        "logging": {"level": "info"},
    }
    path = root / "notary-server.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def start_notary_server(
    root: Path, daemon: Daemon, algorithm: str, extra: dict[str, Any] | None = None
) -> NotaryServer:
    """notary-server on loopback, signing through ``daemon``; ``extra`` config sections
    (e.g. ``"auth"``) are added to notary_server_config's. Waits until it is healthy."""
    binary = require("notary-server")
    issue(
        daemon.pki,
        "notary-server-tls",
        "localhost",
        load_ca(daemon.pki),
        server=True,
        dns=("localhost",),
        ips=("127.0.0.1",),
    )
    port = free_port()
    config = notary_server_config(root, daemon, port, algorithm)
    if extra:
        config.write_text(json.dumps({**json.loads(config.read_text()), **extra}, indent=2))
    log_path = root / "notary-server.log"
    proc = subprocess.Popen(
        [binary, "-config", str(config), "-logf", "logfmt"],
        stdout=log_path.open("ab"),
        stderr=subprocess.STDOUT,
        cwd=root,
    )
    server = NotaryServer(root, port, proc, log_path)
    deadline = time.monotonic() + 30
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"notary-server exited ({proc.returncode}):\n{server.log()}")
        try:
            # /_notary_server/health reports the trust service's health checks too.
            with https_get(server, "/_notary_server/health") as resp:
                if resp.status == 200:
                    return server
        except OSError as exc:
            last = exc
        time.sleep(0.2)
    proc.kill()
    raise TimeoutError(f"notary-server not healthy after 30s ({last}):\n{server.log()}")


def https_get(server: NotaryServer, path: str) -> Any:
    ctx = ssl.create_default_context(cafile=str(server.root / "signerd" / "pki" / "ca.pem"))
    return urllib.request.urlopen(server.url + path, context=ctx, timeout=10)


class NotaryCLI:
    def __init__(self, server: NotaryServer, trust_dir: Path, ca: Path, logs: Any) -> None:
        self.binary = require("notary")
        self.server = server
        self.trust_dir = trust_dir
        self.ca = ca
        self.logs = logs

    def __call__(self, *args: str, stdin: str | None = None) -> str:
        """Run ``notary <args>`` (``stdin`` answers its prompts); fail the test if it fails."""
        cmd = [
            self.binary,
            "-s",
            self.server.url,
            "-d",
            str(self.trust_dir),
            "--tlscacert",
            str(self.ca),
            *args,
        ]
        env = dict(os.environ, **PASSPHRASES)
        try:
            done = subprocess.run(
                cmd,
                env=env,
                input=stdin,
                capture_output=True,
                text=True,
                timeout=CLI_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"`notary {' '.join(args)}` timed out after {CLI_TIMEOUT}s\n{self.logs()}")
            raise AssertionError from exc
        if done.returncode != 0:
            pytest.fail(
                f"`notary {' '.join(args)}` failed ({done.returncode}):\n"
                f"--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}\n{self.logs()}",
                pytrace=False,
            )
        return done.stdout + done.stderr


def stop_notary_server(server: NotaryServer) -> None:
    """SIGTERM, then SIGKILL after 10 s: the server started by ``start_notary_server``."""
    if server.proc.poll() is not None:
        return
    server.proc.send_signal(signal.SIGTERM)
    try:
        server.proc.wait(10)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()


def delegation_key(directory: Path, name: str = "releases") -> tuple[Path, Path]:
    """A signer's own key, as a contributor holds it: an EC private key PEM (what
    `notary key import` takes) and its self-signed certificate (what a delegation lists)."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    key_path, cert_path = directory / f"{name}-key.pem", directory / f"{name}.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path
