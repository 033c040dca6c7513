"""Where the daemon is and which certificate we present: one small config object.

Read from a TOML file (``SIGNER_CLIENT_CONFIG`` or an explicit path) or from the
environment (``SIGNER_ADDRESS``, ``SIGNER_CA``, ``SIGNER_CERT``, ``SIGNER_KEY``):

    address = "localhost:7443"
    ca = "pki/ca.pem"
    cert = "pki/client-alice.pem"
    key = "pki/client-alice-key.pem"
    timeout = 10.0
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any


class ClientConfigError(ValueError):
    """A client config that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class ClientConfig:
    address: str
    ca: Path
    cert: Path
    key: Path
    timeout: float = 10.0  # per-call deadline, seconds
    retries: int = 4  # attempts after the first for UNAVAILABLE on idempotent calls
    server_name: str | None = None  # TLS name to check, if not the address's host

    @classmethod
    def from_file(cls, path: Path) -> ClientConfig:
        """Read a TOML client config; any mistake raises ClientConfigError naming the file."""
        try:
            data = tomllib.loads(path.read_text())
        except OSError as exc:
            raise ClientConfigError(f"client config {path}: {exc.strerror or exc}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ClientConfigError(f"client config {path}: not valid TOML: {exc}") from None
        base = path.parent.resolve()

        def field(name: str, kind: type, default: Any = None) -> Any:
            value = data.get(name, default)
            if value is None:
                raise ClientConfigError(f"client config {path}: {name} is missing")
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            expected, ok = _CHECKS[kind]
            if not isinstance(value, kind) or isinstance(value, bool) or not ok(value):
                raise ClientConfigError(
                    f"client config {path}: {name} must be {expected}, not {value!r}"
                )
            return value

        def rel(name: str) -> Path:
            p = Path(field(name, str))
            return p if p.is_absolute() else base / p

        unknown = sorted(set(data) - _FIELDS)
        if unknown:
            raise ClientConfigError(
                f"client config {path}: unknown field(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(_FIELDS))}"
            )
        return cls(
            address=field("address", str),
            ca=rel("ca"),
            cert=rel("cert"),
            key=rel("key"),
            timeout=field("timeout", float, 10.0),
            retries=field("retries", int, 4),
            server_name=data.get("server_name") and field("server_name", str),
        )

    @classmethod
    def from_env(cls, address: str | None = None) -> ClientConfig:
        """From ``SIGNER_CLIENT_CONFIG`` if set, else from ``SIGNER_*`` variables."""
        path = os.environ.get("SIGNER_CLIENT_CONFIG")
        if path:
            config = cls.from_file(Path(path))
            return replace(config, address=address) if address else config
        try:
            return cls(
                address=address or os.environ["SIGNER_ADDRESS"],
                ca=Path(os.environ["SIGNER_CA"]),
                cert=Path(os.environ["SIGNER_CERT"]),
                key=Path(os.environ["SIGNER_KEY"]),
            )
        except KeyError as exc:
            raise ClientConfigError(
                f"no client config: set SIGNER_CLIENT_CONFIG or {exc.args[0]} "
                "(with SIGNER_ADDRESS, SIGNER_CA, SIGNER_CERT, SIGNER_KEY)"
            ) from None


_FIELDS = {"address", "ca", "cert", "key", "timeout", "retries", "server_name"}
# A field's type -> what it must be, and the check of its value.
_CHECKS: dict[type, tuple[str, Callable[[Any], bool]]] = {
    str: ("a non-empty string", bool),
    float: ("a number > 0", lambda v: v > 0),
    int: ("an integer >= 0", lambda v: v >= 0),
}
