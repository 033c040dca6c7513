"""The daemon's configuration: one small TOML file, one frozen tree of typed sections.

Every section is a frozen dataclass below (``[server]`` is ``ServerConfig``, ...), read
and type-checked here, once, at load time: modules receive their own section and never
see the file. An unknown section or key, a wrong type or a value out of range is a
``ConfigError`` naming the file, the section and key, and what was expected.

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

``[log]`` (signer.logs), ``[audit]`` (checkpoints and anchors, docs/policy.md) and
``[notary]`` (the notary-signer API, docs/notary.md) are optional too, and so is
``[metrics]`` (Prometheus, docs/operating.md; off unless ``listen`` is set):

    [metrics]
    listen = "127.0.0.1:9464"      # HTTP, plain text: keep it on loopback or a private network
    refresh_seconds = 5            # how often key and quorum counts are read from the state
"""

from __future__ import annotations

import logging
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from signer.errors import ConfigError
from signer.logs import LogConfig

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from signer.storage import Backend

DEFAULT_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
# A SignBatch item with a digest: key_id (64 hex), a SHA-384 digest, tags; generously rounded.
BATCH_ITEM_BYTES = 256
# Room for the fields around the payload (key_id, request_id) and protobuf framing.
MESSAGE_OVERHEAD_BYTES = 64 * 1024


@dataclass(frozen=True)
class ServerConfig:
    """``[server]``: the gRPC listener and the bounds on what one client can make it hold."""

    listen: str = "127.0.0.1:7443"
    workers: int = 1  # processes sharing the port (SO_REUSEPORT); 1: no supervisor
    max_payload_bytes: int = 16 * 1024 * 1024
    max_batch_items: int = 1024
    grace_seconds: float = 10.0  # in-flight requests may finish this long at a stop
    max_concurrent_rpcs: int = 128
    max_concurrent_streams: int = 100
    idle_timeout_seconds: float = 300.0
    handshake_timeout_seconds: float = 10.0
    # Each worker on a CPU of its own (worker i on the i-th allowed CPU, round robin):
    # SignBatch +1-8 % on the 2-core bench VM (docs/performance.md); with workers > 1 only.
    pin_workers: bool = False

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


@dataclass(frozen=True)
class TlsConfig:
    """``[tls]``: mutual TLS, required (the daemon never serves in the clear)."""

    ca: Path  # client certificates must chain to this CA
    cert: Path
    key: Path
    crl: Path | None = None  # revoked client certificates (PEM or DER), re-read on SIGHUP


@dataclass(frozen=True)
class TokenConfig:
    """``[token]``: the PKCS#11 module and token. ``uri`` (RFC 7512) may name the token,
    serial and module instead; the PIN comes from ``pin_env`` or ``pin_file``, never here."""

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
    """``[state]``: the state directory and, for replicas, the shared database.

    The password is never in the config file (nor in the URL): it comes from a file
    (mode 0600) or an environment variable, like the token PIN."""

    dir: Path = Path("state")  # SQLite files, the last good policy
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
class PolicyConfig:
    """``[policy]``: the policy file; without one any authenticated client may act."""

    file: Path | None = None


@dataclass(frozen=True)
class AuditConfig:
    """``[audit]``: how often the audit key signs the chain's tip, and where each
    checkpoint is also sent (docs/policy.md). ``anchor_file`` must be absolute: auditors
    read it from elsewhere, with or without this file."""

    checkpoint_entries: int = 1000
    checkpoint_seconds: float = 60.0
    anchor_file: Path | None = None
    anchor_command: tuple[str, ...] = ()  # run per checkpoint, its JSON line on stdin

    def allowed_tail(self) -> tuple[int, float]:
        """How far a healthy chain may run past its last checkpoint: (entries, seconds).

        Twice the cadence, plus a few seconds (the checkpointer polls, signing takes a
        moment). The daemon checkpoints at a clean stop and, after an unclean one, at its
        next start; only a token that is down right now (checkpoints retry) leaves more."""
        return 2 * self.checkpoint_entries, 2 * self.checkpoint_seconds + 5.0


@dataclass(frozen=True)
class NotaryConfig:
    """``[notary]``: the notary-signer API on the daemon's port (docs/notary.md), the
    roles notary-server may create keys for, and the retirement of its unused keys
    (``retire_unused_days`` 0: no schedule)."""

    enabled: bool = True
    roles: tuple[str, ...] = ("timestamp", "snapshot")
    retire_unused_days: float = 0.0
    retire_idle_repositories: bool = False
    retire_interval_seconds: float = 3600.0


@dataclass(frozen=True)
class MetricsConfig:
    """``[metrics]``: the Prometheus listener (``host:port``; empty: no metrics), served by
    the supervisor for all its workers (signer.metrics), and how often the counts read
    from the state (keys by state, open quorum requests) are refreshed."""

    listen: str = ""
    refresh_seconds: float = 5.0

    @property
    def address(self) -> tuple[str, int] | None:
        """(host, port) to bind, None when metrics are off; ``listen`` is checked at load."""
        if not self.listen:
            return None
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


@dataclass(frozen=True)
class SignerConfig:
    """The whole file: one typed section per table (absent ones take their defaults)."""

    tls: TlsConfig
    token: TokenConfig
    server: ServerConfig = field(default_factory=ServerConfig)
    state: StateConfig = field(default_factory=StateConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    log: LogConfig = field(default_factory=LogConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    notary: NotaryConfig = field(default_factory=NotaryConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    # Not from the file: the last policy that loaded, kept by the supervisor. A worker
    # (re)started while the policy file is broken falls back to it instead of refusing.
    policy_fallback: Path | None = None
    crl_fallback: Path | None = None  # likewise, the last CRL that loaded ([tls] crl)


# The file's tables and the section each becomes; a table's keys are its fields' names.
SECTIONS: dict[str, type] = {
    "server": ServerConfig,
    "tls": TlsConfig,
    "token": TokenConfig,
    "state": StateConfig,
    "policy": PolicyConfig,
    "log": LogConfig,
    "audit": AuditConfig,
    "notary": NotaryConfig,
    "metrics": MetricsConfig,
}
# Keys read that are not fields: ``uri`` fills in token fields; a PIN or password in the
# file is refused with its own message (not as an unknown key).
ALSO_READ: dict[str, frozenset[str]] = {
    "token": frozenset({"uri", "pin"}),
    "state": frozenset({"password"}),
}
REFUSED = frozenset({"pin", "password"})


def _known() -> dict[str, frozenset[str]]:
    return {
        name: frozenset(f.name for f in fields(cls)) | ALSO_READ.get(name, frozenset())
        for name, cls in SECTIONS.items()
    }


# Every section and key the daemon reads. Anything else is a typo or a setting of another
# version, which would otherwise be ignored without a word ("pin_fille", "[tsl]").
KNOWN_SETTINGS: dict[str, frozenset[str]] = _known()


def ensure_state_dir(path: Path) -> Path:
    """The state directory, 0700: the registry, the audit chain, the last good policy.

    Created 0700. An existing one of the daemon's user with any group or other bits is
    tightened to 0700 (a warning says so): the umask may have left the files in it
    readable. One owned by another user, or writable by group or others, is refused:
    whoever can write there can replace the databases the daemon trusts."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    mode = info.st_mode & 0o777
    _refuse_foreign_state_dir(path, info.st_uid, mode)
    if mode & 0o077:
        try:
            path.chmod(0o700)
        except OSError as exc:
            raise ConfigError(
                f"the state directory {path} has mode {mode:04o} and cannot be made 0700: "
                f"{exc.strerror or exc}"
            ) from exc
        log.warning(
            "the state directory %s had mode %04o: tightened to 0700 (only the daemon's "
            "user may read the registry and the audit chain)",
            path,
            mode,
        )
    return path


def _refuse_foreign_state_dir(path: Path, owner: int, mode: int) -> None:
    """ConfigError unless ``path`` is the daemon user's and only it may write there."""
    user = os.geteuid()
    if owner != user:
        raise ConfigError(
            f"the state directory {path} is owned by uid {owner}, not by the daemon's user "
            f"(uid {user}): chown it to that user, or use a directory of its own"
        )
    if mode & 0o022:
        raise ConfigError(
            f"the state directory {path} has mode {mode:04o}: it must not be "
            f"writable by group or others (chmod 700 {path})"
        )


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


def load_config(path: Path) -> SignerConfig:
    """Read, check and type the whole file; ConfigError names the file and the key."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    _check_known(data, path)
    tables = {name: Table(path, name, data.get(name, {})) for name in SECTIONS}
    return SignerConfig(
        server=_server(tables["server"]),
        tls=_tls(tables["tls"]),
        token=_token(tables["token"]),
        state=_state(tables["state"]),
        policy=PolicyConfig(file=tables["policy"].path("file")),
        log=_log(tables["log"]),
        audit=_audit(tables["audit"]),
        notary=_notary(tables["notary"]),
        metrics=_metrics(tables["metrics"]),
    )


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
                keys = ", ".join(sorted(known - REFUSED))
                raise ConfigError(f"{path}: unknown setting {name}.{key} (known: {keys})")


class Table:
    """One table of the file, read key by key: each getter checks the value's type and
    range, and a refusal names the file, ``[section] key``, what was expected and what
    was found."""

    def __init__(self, path: Path, name: str, values: dict[str, Any]) -> None:
        self.file = path
        self.name = name
        self.values = values
        self.base = path.parent.resolve()

    def __contains__(self, key: str) -> bool:
        return key in self.values

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.file}: [{self.name}] {key} {message}")

    def _wrong(self, key: str, expected: str) -> ConfigError:
        return self.error(key, f"must be {expected}, got {_shown(self.values[key])}")

    def string(self, key: str, default: str, empty: bool = True) -> str:
        value = self.values.get(key, default)
        if not isinstance(value, str) or not (empty or value):
            raise self._wrong(key, "a string" if empty else "a non-empty string")
        return value

    def optional_string(self, key: str) -> str | None:
        """A string, or None when absent or empty."""
        return self.string(key, "") or None

    def boolean(self, key: str, default: bool) -> bool:
        value = self.values.get(key, default)
        if not isinstance(value, bool):
            raise self._wrong(key, "true or false")
        return value

    def integer(self, key: str, default: int, minimum: int = 1) -> int:
        value = self.values.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self._wrong(key, f"an integer >= {minimum}")
        return value

    def number(self, key: str, default: float, positive: bool = True) -> float:
        """Seconds, days...: an integer or a fraction, > 0 (or >= 0 if not ``positive``)."""
        value = self.values.get(key, default)
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok or not (value > 0 if positive else value >= 0):
            raise self._wrong(key, "a number > 0" if positive else "a number >= 0")
        return float(value)

    def path(self, key: str, default: str = "") -> Path | None:
        """A path relative to the config file's directory; None when absent or empty."""
        value = self.values.get(key, default)
        if not isinstance(value, str):
            raise self._wrong(key, "a path (a string)")
        if not value:
            return None
        p = Path(value)
        return p if p.is_absolute() else self.base / p

    def required_path(self, key: str, what: str) -> Path:
        if key not in self.values:
            raise self.error(key, f"is missing: {what}")
        found = self.path(key)
        if found is None:
            raise self._wrong(key, f"a path ({what})")
        return found

    def strings(self, key: str, default: tuple[str, ...], example: str) -> tuple[str, ...]:
        value = self.values.get(key, list(default))
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self._wrong(key, f"a list of non-empty strings, e.g. {example}")
        return tuple(value)


def _shown(value: Any) -> str:
    """A value as the file spells it (``true``, not ``True``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    return repr(value)


def _server(t: Table) -> ServerConfig:
    d = ServerConfig()
    return ServerConfig(
        listen=t.string("listen", d.listen, empty=False),
        workers=t.integer("workers", d.workers),
        max_payload_bytes=t.integer("max_payload_bytes", d.max_payload_bytes),
        max_batch_items=t.integer("max_batch_items", d.max_batch_items),
        grace_seconds=t.number("grace_seconds", d.grace_seconds, positive=False),
        max_concurrent_rpcs=t.integer("max_concurrent_rpcs", d.max_concurrent_rpcs),
        max_concurrent_streams=t.integer("max_concurrent_streams", d.max_concurrent_streams),
        idle_timeout_seconds=t.number("idle_timeout_seconds", d.idle_timeout_seconds),
        handshake_timeout_seconds=t.number(
            "handshake_timeout_seconds", d.handshake_timeout_seconds
        ),
        pin_workers=t.boolean("pin_workers", d.pin_workers),
    )


def _tls(t: Table) -> TlsConfig:
    return TlsConfig(
        ca=t.required_path("ca", "the CA client certificates must chain to"),
        cert=t.required_path("cert", "the server's certificate"),
        key=t.required_path("key", "the server's private key"),
        crl=t.path("crl"),
    )


def _token(t: Table) -> TokenConfig:
    d = TokenConfig()
    if "pin" in t:
        raise t.error("pin", "is not allowed: use pin_env or pin_file")
    uri_text = t.optional_string("uri")
    try:
        uri = parse_pkcs11_uri(uri_text) if uri_text else {}
    except ConfigError as exc:
        raise t.error("uri", f"must be a pkcs11: URI (RFC 7512): {exc}") from None
    label = t.string("label", "") or uri.get("token", "")
    if not label:
        raise ConfigError(f"{t.file}: name the token: [token] label or uri = 'pkcs11:token=LABEL'")
    return TokenConfig(
        module=t.string("module", "") or uri.get("module-path") or d.module,
        label=label,
        serial=t.optional_string("serial") or uri.get("serial"),
        pin_env=t.string("pin_env", d.pin_env, empty=False),
        pin_file=t.path("pin_file"),
        probe_interval=t.number("probe_interval", d.probe_interval),
        hang_seconds=t.number("hang_seconds", d.hang_seconds),
    )


def _state(t: Table) -> StateConfig:
    d = StateConfig()
    url = t.optional_string("url")
    if url is not None:
        if not url.startswith(("postgresql://", "postgres://", "sqlite:")):
            raise t.error("url", f"{url!r}: use postgresql://... or sqlite:///dir")
        if "password" in t or _url_password(url):
            raise ConfigError(
                f"{t.file}: no database password in the config file: use state.password_env "
                "or state.password_file"
            )
    elif "password" in t:
        raise t.error("password", "is not allowed: use password_env or password_file")
    return StateConfig(
        dir=t.path("dir", str(d.dir)) or t.base / d.dir,  # "": the default
        url=url,
        password_env=t.string("password_env", d.password_env, empty=False),
        password_file=t.path("password_file"),
        replica=t.string("replica", d.replica),
    )


def _log(t: Table) -> LogConfig:
    d = LogConfig()
    fmt = t.string("format", d.format)
    if fmt not in ("text", "json"):
        raise t.error("format", f'must be "text" or "json", got {fmt!r}')
    requests = t.boolean("requests", False) if "requests" in t else None
    return LogConfig(format=fmt, requests=requests)


def _audit(t: Table) -> AuditConfig:
    d = AuditConfig()
    anchor_file = t.optional_string("anchor_file")
    if anchor_file is not None and not Path(anchor_file).is_absolute():
        raise t.error("anchor_file", f"must be an absolute path, got {anchor_file!r}")
    return AuditConfig(
        checkpoint_entries=t.integer("checkpoint_entries", d.checkpoint_entries),
        checkpoint_seconds=t.number("checkpoint_seconds", d.checkpoint_seconds),
        anchor_file=Path(anchor_file) if anchor_file else None,
        anchor_command=t.strings("anchor_command", d.anchor_command, '["prog", "arg"]'),
    )


def _notary(t: Table) -> NotaryConfig:
    d = NotaryConfig()
    return NotaryConfig(
        enabled=t.boolean("enabled", d.enabled),
        roles=t.strings("roles", d.roles, '["timestamp", "snapshot"]'),
        retire_unused_days=t.number("retire_unused_days", d.retire_unused_days, positive=False),
        retire_idle_repositories=t.boolean("retire_idle_repositories", d.retire_idle_repositories),
        retire_interval_seconds=t.number("retire_interval_seconds", d.retire_interval_seconds),
    )


def _metrics(t: Table) -> MetricsConfig:
    d = MetricsConfig()
    listen = t.string("listen", d.listen).strip()
    if listen:
        host, sep, port = listen.rpartition(":")
        bracketed = host.startswith("[") and host.endswith("]")
        if (
            not sep
            or not host
            or not port.isdigit()
            or not 0 < int(port) < 65536
            or (":" in host and not bracketed)
        ):
            raise t.error(
                "listen",
                f'must be "host:port" (e.g. "127.0.0.1:9464", "[::1]:9464"), got {listen!r}',
            )
    return MetricsConfig(
        listen=listen, refresh_seconds=t.number("refresh_seconds", d.refresh_seconds)
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
    return open_backend(config.state.dir, url, password)
