"""A real Docker registry for tests: Debian's ``docker-registry`` plus images pushed by skopeo.

Nothing is mocked. ``start_registry`` runs ``/usr/bin/docker-registry`` (docker/distribution)
on a free loopback port with its own storage directory and config file, over plain HTTP or
TLS (a throw-away CA whose PEM the client is given), anonymous, with Basic auth (htpasswd)
or with token auth: a small token server in a thread issues ES256 JWTs, signed with a key
whose self-signed certificate is the registry's ``rootcertbundle`` and sent in the JWT's
``x5c`` header, as distribution's ``registry/auth/token`` verifies them.

``push_image`` builds an image in a temp dir from Python (an OCI layout, or skopeo's
``dir:`` layout for a Docker schema 2 manifest; a multi-arch OCI index with ``index=True``)
and pushes it with ``skopeo copy --preserve-digests``, so the digest and size it returns,
computed from the manifest bytes built here, are the ground truth the registry serves.

Use from a test module::

    from registry_harness import push_image, running_registry

    with running_registry(tmp_path, auth="token") as reg:
        image = push_image(reg, "team/app", "1.0")
        ...  # reg.host, reg.url, reg.ca_file, reg.username, reg.password

or take the ``registry_factory`` fixture (import it into the module with ``# noqa: F401``).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import gzip
import hashlib
import io
import ipaddress
import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import tarfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

REGISTRY_BIN = "/usr/bin/docker-registry"
SKOPEO_BIN = "skopeo"
SERVICE = "signer-test-registry"
ISSUER = "signer-test-token-issuer"
DEFAULT_USER = "alice"
DEFAULT_PASSWORD = "correct horse"

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"

Auth = Literal["token", "basic"] | None


def require_tools() -> None:
    """Skip (not fail) where the registry or skopeo is not installed: `make deps` adds them."""
    missing = [b for b in (REGISTRY_BIN, SKOPEO_BIN) if shutil.which(b) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: apt-get install docker-registry skopeo")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- certificates
def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


@dataclass(frozen=True)
class TLSFiles:
    """A throw-away CA and a server certificate for 127.0.0.1 / localhost signed by it."""

    ca_file: Path
    cert_file: Path
    key_file: Path


def make_tls_files(directory: Path) -> TLSFiles:
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "registry test CA")])
    now = _now()
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TLSFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    files.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(files.key_file, key)
    return files


# --------------------------------------------------------------------------- token server
def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class TokenServer:
    """docker's token protocol: GET /token?service=&scope= with Basic credentials -> JWT.

    ``users`` maps user name to password; wrong or missing credentials get 401, as a real
    token server configured without anonymous access does. ``token_field`` says which
    JSON field(s) carry the token ("token", "access_token" or "both") so a client's
    handling of either can be tested. ``requests`` counts token requests.
    """

    def __init__(
        self,
        directory: Path,
        users: dict[str, str],
        *,
        service: str = SERVICE,
        issuer: str = ISSUER,
        token_field: str = "both",
    ) -> None:
        self.users = dict(users)
        self.service = service
        self.issuer = issuer
        self.token_field = token_field
        self.requests = 0
        self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)])
        now = _now()
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        directory.mkdir(parents=True, exist_ok=True)
        self.bundle = directory / "token-root.pem"
        self.bundle.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server._handle(self)

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = int(self._httpd.server_address[1])
        self.realm = f"http://127.0.0.1:{self.port}/token"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def _account(self, header: str | None) -> str | None:
        if not header or not header.lower().startswith("basic "):
            return None
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return None
        if user in self.users and secrets.compare_digest(self.users[user], password):
            return user
        return None

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        self.requests += 1
        url = urllib.parse.urlsplit(request.path)
        query = urllib.parse.parse_qs(url.query)
        account = self._account(request.headers.get("Authorization"))
        if url.path != "/token":
            self._reply(request, 404, {"errors": [{"code": "NOT_FOUND"}]})
            return
        if account is None:
            self._reply(request, 401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad"}]})
            return
        access = []
        for scope in query.get("scope", []):
            for item in scope.split(" "):
                kind, _, rest = item.partition(":")
                name, _, actions = rest.rpartition(":")
                if kind and name:
                    access.append({"type": kind, "name": name, "actions": actions.split(",")})
        token = self.issue(account, query.get("service", [self.service])[0], access)
        body: dict[str, Any] = {"expires_in": 300, "issued_at": _now().isoformat()}
        if self.token_field in ("token", "both"):
            body["token"] = token
        if self.token_field in ("access_token", "both"):
            body["access_token"] = token
        self._reply(request, 200, body)

    @staticmethod
    def _reply(request: BaseHTTPRequestHandler, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        if status == 401:
            request.send_header("WWW-Authenticate", 'Basic realm="token"')
        request.end_headers()
        request.wfile.write(data)

    def issue(self, subject: str, audience: str, access: list[dict[str, Any]]) -> str:
        """An ES256 JWT as distribution's token auth verifies it (x5c chain to the bundle)."""
        header = {
            "typ": "JWT",
            "alg": "ES256",
            "x5c": [
                base64.b64encode(self.certificate.public_bytes(serialization.Encoding.DER)).decode()
            ],
        }
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": audience,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        signing_input = (
            _b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + _b64url(json.dumps(claims, separators=(",", ":")).encode())
        )
        der = self._key.sign(signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return signing_input + "." + _b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


# --------------------------------------------------------------------------- registry
@dataclass
class Registry:
    """A running docker-registry. ``host`` is "127.0.0.1:PORT", the reference's registry part."""

    host: str
    url: str
    scheme: str
    directory: Path
    process: subprocess.Popen[bytes]
    log_file: Path
    auth: Auth = None
    ca_file: Path | None = None
    username: str | None = None
    password: str | None = None
    token_server: TokenServer | None = None
    _stopped: bool = field(default=False, repr=False)

    def ref(self, repository: str, tag: str) -> str:
        return f"{self.host}/{repository}:{tag}"

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def stop(self) -> None:
        """Stop the registry (and its token server); safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        if self.token_server is not None:
            self.token_server.stop()


def _htpasswd_line(user: str, password: str) -> str:
    with warnings.catch_warnings():  # crypt is deprecated but the only bcrypt in the stdlib
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt

        if crypt.METHOD_BLOWFISH not in crypt.methods:
            pytest.skip("libc crypt has no bcrypt: Basic auth registry unavailable")
        # cost 4 (rounds=16): the registry checks it on every request.
        return f"{user}:{crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))}"


def start_registry(
    directory: Path,
    *,
    auth: Auth = None,
    tls: bool = False,
    username: str = DEFAULT_USER,
    password: str = DEFAULT_PASSWORD,
    token_field: str = "both",
    port: int | None = None,
) -> Registry:
    """Start docker-registry on 127.0.0.1 with storage and config under ``directory``.

    ``auth``: None (anonymous), "token" (Bearer via a TokenServer thread) or "basic"
    (htpasswd). ``tls``: serve HTTPS with a cert from a fresh CA (``Registry.ca_file``).
    Returns once the registry answers on /v2/; call ``stop()`` (or use running_registry).
    """
    require_tools()
    directory.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    scheme = "https" if tls else "http"
    config: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "info", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(directory / "storage")},
            "delete": {"enabled": True},
        },
        "http": {"addr": f"127.0.0.1:{port}", "secret": secrets.token_hex(16)},
    }
    ca_file = None
    if tls:
        files = make_tls_files(directory / "tls")
        config["http"]["tls"] = {"certificate": str(files.cert_file), "key": str(files.key_file)}
        ca_file = files.ca_file
    token_server = None
    if auth == "token":
        token_server = TokenServer(
            directory / "token", {username: password}, token_field=token_field
        )
        config["auth"] = {
            "token": {
                "realm": token_server.realm,
                "service": token_server.service,
                "issuer": token_server.issuer,
                "rootcertbundle": str(token_server.bundle),
            }
        }
    elif auth == "basic":
        htpasswd = directory / "htpasswd"
        htpasswd.write_text(_htpasswd_line(username, password) + "\n")
        config["auth"] = {"htpasswd": {"realm": "signer-test", "path": str(htpasswd)}}
    elif auth is not None:
        raise ValueError(f"auth must be None, 'token' or 'basic', not {auth!r}")
    config_file = directory / "config.yml"
    config_file.write_text(json.dumps(config, indent=2))  # YAML is a superset of JSON

    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    log_file = directory / "registry.log"
    with log_file.open("wb") as log:
        process = subprocess.Popen(
            [REGISTRY_BIN, "serve", str(config_file)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    registry = Registry(
        host=f"127.0.0.1:{port}",
        url=f"{scheme}://127.0.0.1:{port}",
        scheme=scheme,
        directory=directory,
        process=process,
        log_file=log_file,
        auth=auth,
        ca_file=ca_file,
        username=username if auth else None,
        password=password if auth else None,
        token_server=token_server,
    )
    try:
        _wait_ready(registry)
    except BaseException:
        registry.stop()
        raise
    return registry


def _wait_ready(registry: Registry, timeout: float = 15.0) -> None:
    context = ssl.create_default_context(cafile=str(registry.ca_file)) if registry.ca_file else None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if registry.process.poll() is not None:
            raise RuntimeError(
                f"docker-registry exited with {registry.process.returncode}:\n{registry.log()}"
            )
        try:
            with urllib.request.urlopen(f"{registry.url}/v2/", timeout=1, context=context):
                return
        except urllib.error.HTTPError:  # 401 from an auth-protected registry: it is up
            return
        except (urllib.error.URLError, OSError):
            time.sleep(0.05)
    raise RuntimeError(f"docker-registry not ready after {timeout}s:\n{registry.log()}")


@contextlib.contextmanager
def running_registry(directory: Path, **kwargs: Any) -> Iterator[Registry]:
    """``start_registry`` as a context manager: the registry is stopped on exit."""
    registry = start_registry(directory, **kwargs)
    try:
        yield registry
    finally:
        registry.stop()


@pytest.fixture
def registry_factory(tmp_path: Path) -> Iterator[Callable[..., Registry]]:
    """``registry_factory(auth=..., tls=...)`` starts a registry; all stop at teardown."""
    started: list[Registry] = []

    def start(**kwargs: Any) -> Registry:
        registry = start_registry(tmp_path / f"registry{len(started)}", **kwargs)
        started.append(registry)
        return registry

    yield start
    for registry in started:
        registry.stop()


# --------------------------------------------------------------------------- images
@dataclass(frozen=True)
class Blob:
    media_type: str
    data: bytes

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.data).hexdigest()

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        return {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": len(self.data),
            **extra,
        }


@dataclass(frozen=True)
class PushedImage:
    """Ground truth for what a tag points to: computed from the bytes built and pushed."""

    reference: str  # "127.0.0.1:PORT/repo:tag"
    repository: str
    tag: str
    digest: str
    size: int
    media_type: str
    manifest: bytes
    children: tuple[str, ...] = ()  # per-platform manifest digests of an index


def _layer(content: str) -> tuple[bytes, str]:
    """A tiny gzip'd tar with one file; returns (blob, diff_id). Deterministic bytes."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        data = content.encode()
        info = tarfile.TarInfo("hello.txt")
        info.size = len(data)
        info.mtime = 0
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(data))
    tar_bytes = raw.getvalue()
    return gzip.compress(tar_bytes, mtime=0), "sha256:" + hashlib.sha256(tar_bytes).hexdigest()


def _json(obj: Any) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=True).encode() + b"\n"


def build_image(
    content: str, *, architecture: str = "amd64", docker: bool = False
) -> tuple[Blob, list[Blob]]:
    """An image manifest and the blobs it references (config and one layer)."""
    layer_data, diff_id = _layer(content)
    layer = Blob(DOCKER_LAYER if docker else OCI_LAYER, layer_data)
    config = Blob(
        DOCKER_CONFIG if docker else OCI_CONFIG,
        _json(
            {
                "architecture": architecture,
                "os": "linux",
                "config": {"Cmd": ["/hello.txt"], "Labels": {"test.content": content}},
                "rootfs": {"type": "layers", "diff_ids": [diff_id]},
                "created": "2024-01-01T00:00:00Z",
            }
        ),
    )
    media_type = DOCKER_MANIFEST if docker else OCI_MANIFEST
    manifest = Blob(
        media_type,
        _json(
            {
                "schemaVersion": 2,
                "mediaType": media_type,
                "config": config.descriptor(),
                "layers": [layer.descriptor()],
            }
        ),
    )
    return manifest, [config, layer]


def _write_oci_layout(directory: Path, top: Blob, blobs: list[Blob], tag: str) -> None:
    blob_dir = directory / "blobs" / "sha256"
    blob_dir.mkdir(parents=True, exist_ok=True)
    for blob in [top, *blobs]:
        (blob_dir / blob.digest.partition(":")[2]).write_bytes(blob.data)
    (directory / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    index = {
        "schemaVersion": 2,
        "manifests": [top.descriptor(annotations={"org.opencontainers.image.ref.name": tag})],
    }
    (directory / "index.json").write_bytes(_json(index))


def _write_dir_layout(directory: Path, manifest: Blob, blobs: list[Blob]) -> None:
    """skopeo's ``dir:`` transport: any manifest type, blobs named by their hex digest."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "version").write_text("Directory Transport Version: 1.1\n")
    (directory / "manifest.json").write_bytes(manifest.data)
    for blob in blobs:
        (directory / blob.digest.partition(":")[2]).write_bytes(blob.data)


def skopeo_copy(registry: Registry, source: str, destination: str, *, all: bool = False) -> None:
    """``skopeo copy`` into ``registry``, keeping digests; raises with skopeo's stderr."""
    args = [SKOPEO_BIN, "--insecure-policy", "copy", "--quiet", "--preserve-digests"]
    if all:
        args.append("--all")
    if registry.scheme == "http":
        args.append("--dest-tls-verify=false")
    elif registry.ca_file is not None:
        cert_dir = registry.directory / "skopeo-certs"
        cert_dir.mkdir(exist_ok=True)
        shutil.copyfile(registry.ca_file, cert_dir / "ca.crt")
        args += ["--dest-tls-verify=true", "--dest-cert-dir", str(cert_dir)]
    if registry.username is not None:
        args += ["--dest-creds", f"{registry.username}:{registry.password}"]
    args += [source, destination]
    auth_file = registry.directory / "skopeo-auth.json"
    if not auth_file.exists():
        auth_file.write_text("{}")
    env = {**os.environ, "REGISTRY_AUTH_FILE": str(auth_file)}
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, env=env)
    if done.returncode != 0:
        raise RuntimeError(
            f"skopeo copy {source} {destination} failed ({done.returncode}): "
            f"{done.stderr.strip()}\nregistry log:\n{registry.log()[-4000:]}"
        )


def push_image(
    registry: Registry,
    repository: str,
    tag: str,
    *,
    index: bool = False,
    docker: bool = False,
    content: str | None = None,
    architectures: tuple[str, ...] = ("amd64", "arm64"),
) -> PushedImage:
    """Build an image and push it to ``registry`` as ``repository:tag``; return ground truth.

    Default: an OCI image manifest. ``docker=True``: a Docker schema 2 manifest.
    ``index=True``: a multi-arch OCI image index over one OCI manifest per architecture
    (pushed with ``--all``). ``content`` (default "repository:tag") goes into the layer, so
    the same content gives the same digest and new content under an old tag a new one.
    """
    if index and docker:
        raise ValueError("index=True builds an OCI index; docker=True is for single manifests")
    content = content if content is not None else f"{repository}:{tag}"
    work = registry.directory / "images" / uuid.uuid4().hex
    destination = f"docker://{registry.host}/{repository}:{tag}"
    children: tuple[str, ...] = ()
    if index:
        manifests: list[Blob] = []
        blobs: list[Blob] = []
        entries = []
        for arch in architectures:
            manifest, parts = build_image(f"{content} ({arch})", architecture=arch)
            manifests.append(manifest)
            blobs += [manifest, *parts]
            entries.append(manifest.descriptor(platform={"architecture": arch, "os": "linux"}))
        top = Blob(
            OCI_INDEX, _json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries})
        )
        _write_oci_layout(work, top, blobs, tag)
        skopeo_copy(registry, f"oci:{work}:{tag}", destination, all=True)
        children = tuple(m.digest for m in manifests)
    elif docker:
        top, parts = build_image(content, docker=True)
        _write_dir_layout(work, top, parts)
        skopeo_copy(registry, f"dir:{work}", destination)
    else:
        top, parts = build_image(content)
        _write_oci_layout(work, top, parts, tag)
        skopeo_copy(registry, f"oci:{work}:{tag}", destination)
    return PushedImage(
        reference=f"{registry.host}/{repository}:{tag}",
        repository=repository,
        tag=tag,
        digest=top.digest,
        size=len(top.data),
        media_type=top.media_type,
        manifest=top.data,
        children=children,
    )
