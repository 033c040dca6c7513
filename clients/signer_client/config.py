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
from dataclasses import dataclass, replace
from pathlib import Path


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
        data = tomllib.loads(path.read_text())
        base = path.parent.resolve()

        def rel(value: str) -> Path:
            p = Path(value)
            return p if p.is_absolute() else base / p

        return cls(
            address=str(data["address"]),
            ca=rel(data["ca"]),
            cert=rel(data["cert"]),
            key=rel(data["key"]),
            timeout=float(data.get("timeout", 10.0)),
            retries=int(data.get("retries", 4)),
            server_name=data.get("server_name"),
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
            raise ValueError(
                f"no client config: set SIGNER_CLIENT_CONFIG or {exc.args[0]} "
                "(with SIGNER_ADDRESS, SIGNER_CA, SIGNER_CERT, SIGNER_KEY)"
            ) from None
