"""A caller, as the policy sees it: a name and where in the certificate it came from.

Apart from ``signer.identity`` (which reads certificates, with cryptography and gRPC), so
that the policy can be loaded and checked without either: the supervisor validates the
policy file and imports neither (signer/supervisor.py).
"""

from __future__ import annotations

from dataclasses import dataclass

SOURCES = ("uri", "dns", "cn")  # where a principal's name came from; policy prefixes


@dataclass(frozen=True)
class Principal:
    name: str  # e.g. "spiffe://example.org/build-farm", "ci.example.org", "alice"
    source: str  # "uri", "dns" or "cn"
    fingerprint: str  # sha256 of the certificate (DER), hex

    def __str__(self) -> str:
        return self.name
