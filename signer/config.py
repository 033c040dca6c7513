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

    [policy]
    file = "policy.toml"           # optional; without it any authenticated client may act
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from signer.errors import ConfigError

DEFAULT_MODULE = "/usr/lib/softhsm/libsofthsm2.so"


@dataclass(frozen=True)
class TokenConfig:
    module: str = DEFAULT_MODULE
    label: str = ""
    serial: str | None = None
    pin_env: str = "SIGNER_PIN"
    pin_file: Path | None = None
    probe_interval: float = 2.0

    def read_pin(self) -> str:
        if self.pin_file is not None:
            try:
                return self.pin_file.read_text().strip()
            except OSError as exc:
                raise ConfigError(f"cannot read the token PIN from {self.pin_file}: {exc}") from exc
        pin = os.environ.get(self.pin_env)
        if not pin:
            raise ConfigError(
                f"the token PIN is not set: export {self.pin_env} or set token.pin_file"
            )
        return pin


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
    notary_listen: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def max_message_bytes(self) -> int:
        """gRPC's own limit sits well above ours so that oversize payloads get our clear
        INVALID_ARGUMENT; only messages beyond it get gRPC's RESOURCE_EXHAUSTED."""
        return max(64 * 1024 * 1024, self.max_payload_bytes * 4 + 1024 * 1024)


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

    server, tls, token, state, policy = (
        section(n) for n in ("server", "tls", "token", "state", "policy")
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
            notary_listen=server.get("notary_listen"),
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
            ),
            state_dir=rel(str(state.get("dir", "state"))),
            policy_file=rel(policy["file"]) if policy.get("file") else None,
            extra={
                k: v
                for k, v in data.items()
                if k not in ("server", "tls", "token", "state", "policy")
            },
        )
    except KeyError as exc:
        raise ConfigError(f"missing setting {exc.args[0]!r} in {path}") from exc
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid setting in {path}: {exc}") from exc
