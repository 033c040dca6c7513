"""The daemon's configuration: one small TOML file, one frozen object.

Paths are relative to the config file. The token PIN is never read from this file: it
comes from an environment variable or a file named here (``pin_env`` / ``pin_file``).

    [server]
    listen = "127.0.0.1:7443"
    workers = 2                    # processes sharing the port (SO_REUSEPORT)

    [tls]
    ca = "pki/ca.pem"              # client certificates must chain to this CA
    cert = "pki/server.pem"
    key = "pki/server-key.pem"

    [token]
    module = "/usr/lib/softhsm/libsofthsm2.so"
    uri = "pkcs11:token=tuf-signer"   # or: label = "tuf-signer"
    pin_env = "SIGNER_PIN"            # or: pin_file = "/run/secrets/pin"

    [state]
    dir = "state"                  # SQLite: keys.db, audit.db, ...
    # url = "postgresql://signer@db.example/signer"   # replicas share one database
    # password_env = "SIGNER_DB_PASSWORD"             # or: password_file = "/run/secrets/db"
    # replica = "signer-a"                            # named in each audit entry

    [policy]
    file = "policy.toml"           # optional; without it any authenticated client may act
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from signer.errors import ConfigError
from signer.logs import LogConfig

if TYPE_CHECKING:
    from signer.storage import Backend

DEFAULT_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
# A SignBatch item with a digest: key_id (64 hex), a SHA-384 digest, tags; generously rounded.
BATCH_ITEM_BYTES = 256
# Room for the fields around the payload (key_id, request_id) and protobuf framing.
MESSAGE_OVERHEAD_BYTES = 64 * 1024


@dataclass(frozen=True)
class TokenConfig:
    module: str = DEFAULT_MODULE
    label: str = ""
    serial: str | None = None
    pin_env: str = "SIGNER_PIN"
    pin_file: Path | None = None
    probe_interval: float = 2.0
    hang_seconds: float = 5.0

    def read_pin(self) -> str:
        if self.pin_file is not None:
            try:
                with self.pin_file.open() as f:
                    mode = os.fstat(f.fileno()).st_mode
                    if mode & 0o077:  # checked on the open file: no swap between stat and read
                        raise ConfigError(
                            f"the token PIN file {self.pin_file} has mode {mode & 0o777:04o}: "
                            "it must not be readable or writable by group or others "
                            f"(chmod 600 {self.pin_file})"
                        )
                    return f.read().strip()
            except OSError as exc:
                raise ConfigError(f"cannot read the token PIN from {self.pin_file}: {exc}") from exc
        pin = os.environ.get(self.pin_env)
        if not pin:
            raise ConfigError(
                f"the token PIN is not set: export {self.pin_env} or set token.pin_file"
            )
        return pin


@dataclass(frozen=True)
class StateConfig:
    """``[state]`` beyond the directory: the shared database of replicas, if any.

    The password is never in the config file (nor in the URL): it comes from a file
    (mode 0600) or an environment variable, like the token PIN."""

    url: str | None = None
    password_env: str = "SIGNER_DB_PASSWORD"
    password_file: Path | None = None
    replica: str = ""

    @property
    def replica_name(self) -> str:
        """The name each audit entry records: ``replica``, else (a shared database) the
        host's name; empty for SQLite without one (entries hash as they always did)."""
        if self.replica or not self.url or self.url.startswith("sqlite:"):
            return self.replica
        import socket

        return socket.gethostname()

    def read_password(self) -> str | None:
        if self.password_file is not None:
            try:
                with open(self.password_file) as f:
                    mode = os.fstat(f.fileno()).st_mode
                    if mode & 0o077:
                        raise ConfigError(
                            f"the database password file {self.password_file} has mode "
                            f"{mode & 0o777:04o}: it must not be readable or writable by group "
                            f"or others (chmod 600 {self.password_file})"
                        )
                    return f.read().strip()
            except OSError as exc:
                raise ConfigError(
                    f"cannot read the database password from {self.password_file}: {exc}"
                ) from exc
        return os.environ.get(self.password_env) or None


@dataclass(frozen=True)
class SignerConfig:
    listen: str
    ca: Path
    cert: Path
    key: Path
    token: TokenConfig
    state_dir: Path
    workers: int = 1
    policy_file: Path | None = None
    crl: Path | None = None  # [tls] crl: revoked client certificates (PEM or DER)
    max_payload_bytes: int = 16 * 1024 * 1024
    max_batch_items: int = 1024
    grace_seconds: float = 10.0
    max_concurrent_rpcs: int = 128
    max_concurrent_streams: int = 100
    idle_timeout_seconds: float = 300.0
    handshake_timeout_seconds: float = 10.0
    # The last policy that loaded, kept by the supervisor: a worker (re)started while the
    # policy file is broken falls back to it instead of refusing to serve.
    policy_fallback: Path | None = None
    state: StateConfig = field(default_factory=StateConfig)
    log: LogConfig = field(default_factory=LogConfig)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def max_message_bytes(self) -> int:
        """gRPC's receive limit, derived from ours: a Sign with the largest payload, or a
        SignBatch of the most items carrying digests, fits with room for the other fields
        (so a payload just over the limit still gets our clear INVALID_ARGUMENT); anything
        larger is refused by gRPC (RESOURCE_EXHAUSTED) before it is buffered whole. Each
        in-flight call can hold one such message: memory is bounded by this times
        ``max_concurrent_rpcs``."""
        largest = max(self.max_payload_bytes, self.max_batch_items * BATCH_ITEM_BYTES)
        return largest + MESSAGE_OVERHEAD_BYTES


def ensure_state_dir(path: Path) -> Path:
    """The state directory, created 0700 (registry, audit chain, last good policy).

    An existing one writable by group or others is refused: whoever can write there can
    replace the databases the daemon trusts."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = path.stat().st_mode
    if mode & 0o022:
        raise ConfigError(
            f"the state directory {path} has mode {mode & 0o777:04o}: it must not be "
            f"writable by group or others (chmod 700 {path})"
        )
    return path


def parse_pkcs11_uri(uri: str) -> dict[str, str]:
    """The path attributes of an RFC 7512 ``pkcs11:`` URI (token, serial, module-path...)."""
    if not uri.startswith("pkcs11:"):
        raise ConfigError(f"not a pkcs11 URI: {uri!r}")
    path, _, query = uri[len("pkcs11:") :].partition("?")
    attrs: dict[str, str] = {}
    for part in [p for p in path.split(";") if p] + [q for q in query.split("&") if q]:
        name, sep, value = part.partition("=")
        if not sep:
            raise ConfigError(f"malformed attribute {part!r} in {uri!r}")
        attrs[name] = unquote(value)
    return attrs


def _positive(table: dict[str, Any], name: str, default: int | float) -> Any:
    """A positive number of the default's type (ints stay ints, seconds may be fractions)."""
    value = type(default)(table.get(name, default))
    if value <= 0:
        raise ConfigError(f"server.{name} must be positive, not {value}")
    return value


def load_config(path: Path) -> SignerConfig:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    base = path.parent.resolve()

    def rel(value: str) -> Path:
        p = Path(value)
        return p if p.is_absolute() else base / p

    def section(name: str) -> dict[str, Any]:
        value = data.get(name, {})
        if not isinstance(value, dict):
            raise ConfigError(f"[{name}] must be a table")
        return value

    _check_known(data, path)
    server, tls, token, state, policy, log_section = (
        section(n) for n in ("server", "tls", "token", "state", "policy", "log")
    )
    if "pin" in token:
        raise ConfigError("token.pin is not allowed: use pin_env or pin_file")
    uri = parse_pkcs11_uri(token["uri"]) if "uri" in token else {}
    label = token.get("label") or uri.get("token", "")
    if not label:
        raise ConfigError("name the token: token.label or token.uri = 'pkcs11:token=LABEL'")
    try:
        return SignerConfig(
            listen=str(server.get("listen", "127.0.0.1:7443")),
            workers=int(server.get("workers", 1)),
            max_payload_bytes=int(server.get("max_payload_bytes", 16 * 1024 * 1024)),
            max_batch_items=int(server.get("max_batch_items", 1024)),
            grace_seconds=float(server.get("grace_seconds", 10.0)),
            max_concurrent_rpcs=_positive(server, "max_concurrent_rpcs", 128),
            max_concurrent_streams=_positive(server, "max_concurrent_streams", 100),
            idle_timeout_seconds=_positive(server, "idle_timeout_seconds", 300.0),
            handshake_timeout_seconds=_positive(server, "handshake_timeout_seconds", 10.0),
            ca=rel(tls["ca"]),
            cert=rel(tls["cert"]),
            key=rel(tls["key"]),
            crl=rel(tls["crl"]) if tls.get("crl") else None,
            token=TokenConfig(
                module=str(token.get("module") or uri.get("module-path") or DEFAULT_MODULE),
                label=label,
                serial=token.get("serial") or uri.get("serial"),
                pin_env=str(token.get("pin_env", "SIGNER_PIN")),
                pin_file=rel(token["pin_file"]) if token.get("pin_file") else None,
                probe_interval=float(token.get("probe_interval", 2.0)),
                hang_seconds=float(token.get("hang_seconds", 5.0)),
            ),
            state_dir=rel(str(state.get("dir", "state"))),
            state=_state_config(state, rel),
            policy_file=rel(policy["file"]) if policy.get("file") else None,
            log=_log_config(log_section, path),
            extra={
                k: v
                for k, v in data.items()
                if k not in ("server", "tls", "token", "state", "policy", "log")
            },
        )
    except KeyError as exc:
        raise ConfigError(f"missing setting {exc.args[0]!r} in {path}") from exc
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid setting in {path}: {exc}") from exc


# Every section and key the daemon reads. Anything else is a typo or a setting of another
# version, which would otherwise be ignored without a word ("pin_fille", "[tsl]").
KNOWN_SETTINGS: dict[str, frozenset[str]] = {
    "server": frozenset(
        {
            "listen",
            "workers",
            "max_payload_bytes",
            "max_batch_items",
            "grace_seconds",
            "max_concurrent_rpcs",
            "max_concurrent_streams",
            "idle_timeout_seconds",
            "handshake_timeout_seconds",
        }
    ),
    "tls": frozenset({"ca", "cert", "key", "crl"}),
    "token": frozenset(
        {"module", "uri", "label", "serial", "pin_env", "pin_file", "probe_interval"}
        | {"hang_seconds", "pin"}  # pin: refused below with its own message
    ),
    "state": frozenset({"dir", "url", "password_env", "password_file", "replica", "password"}),
    "policy": frozenset({"file"}),
    "log": frozenset({"format", "requests"}),
    "audit": frozenset({"checkpoint_entries", "checkpoint_seconds", "anchor_file"})
    | {"anchor_command"},
    "notary": frozenset(
        {"enabled", "roles", "retire_unused_days", "retire_idle_repositories"}
        | {"retire_interval_seconds"}
    ),
}


def _check_known(data: dict[str, Any], path: Path) -> None:
    """Unknown sections and keys are errors that name the file and the key."""
    for name, value in data.items():
        known = KNOWN_SETTINGS.get(name)
        if known is None:
            sections = ", ".join(f"[{n}]" for n in KNOWN_SETTINGS)
            raise ConfigError(f"{path}: unknown section [{name}] (known: {sections})")
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: [{name}] must be a table")
        for key in value:
            if key not in known:
                keys = ", ".join(sorted(k for k in known if k not in ("pin", "password")))
                raise ConfigError(f"{path}: unknown setting {name}.{key} (known: {keys})")


def _log_config(section: dict[str, Any], path: Path) -> LogConfig:
    fmt = section.get("format", "text")
    if fmt not in ("text", "json"):
        raise ConfigError(f'{path}: log.format {fmt!r}: "text" or "json"')
    requests = section.get("requests")
    if requests is not None and not isinstance(requests, bool):
        raise ConfigError(f"{path}: log.requests must be true or false")
    return LogConfig(format=fmt, requests=requests)


def _state_config(state: dict[str, Any], rel: Any) -> StateConfig:
    url = state.get("url")
    if url is not None:
        url = str(url)
        if not url.startswith(("postgresql://", "postgres://", "sqlite:")):
            raise ConfigError(f"state.url {url!r}: use postgresql://... or sqlite:///dir")
        if "password" in state or _url_password(url):
            raise ConfigError(
                "no database password in the config file: use state.password_env or "
                "state.password_file"
            )
    elif "password" in state:
        raise ConfigError("state.password is not allowed: use password_env or password_file")
    return StateConfig(
        url=url,
        password_env=str(state.get("password_env", "SIGNER_DB_PASSWORD")),
        password_file=rel(state["password_file"]) if state.get("password_file") else None,
        replica=str(state.get("replica", "")),
    )


def _url_password(url: str) -> bool:
    from urllib.parse import urlsplit

    try:
        return urlsplit(url).password is not None
    except ValueError:
        return False


def open_state(config: SignerConfig) -> Backend:
    """The state backend the config names: SQLite in ``[state] dir`` unless ``url``."""
    from signer.storage import open_backend

    url = config.state.url
    password = config.state.read_password() if url and not url.startswith("sqlite:") else None
    return open_backend(config.state_dir, url, password)
