"""A repository's keys as the daemon holds them: found, created and used by notary key ID.

Notary metadata names keys by notary key IDs; the daemon names them by its own key IDs
and records each key's notary ID (``Key.notary_key_id``) and, for a root key, the ID of
its last certificate (``Key.certificate_key_id``). This module is the one place that
maps one to the other, and the one place that turns the daemon's signatures (DER for
ECDSA) into notary's (raw ``r || s``). No private key ever reaches this process.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from signer_api.v1 import signer_pb2 as pb
from signer_client.client import SignerClient
from signer_client.trust.metadata import PublicKey, certificate_key, ecdsa_key

ROOT_CERT_VALIDITY_DAYS = 3650  # notary's default for a root certificate (10 years)


class PendingApprovalError(Exception):
    """A quorum key's signature waits for approvals: nothing was published."""

    def __init__(self, role: str, request: pb.SignatureRequest) -> None:
        self.role = role
        self.request = request
        have = len(request.approvers)
        super().__init__(
            f"{role} metadata waits for approvals on request {request.request_id} "
            f"({have} of {request.approvals_required})"
        )


@dataclass(frozen=True)
class DaemonKey:
    """One daemon key of a repository, with the notary key it appears as in metadata."""

    record: pb.Key
    notary: PublicKey  # as listed in root.json/targets.json

    @property
    def key_id(self) -> str:
        return self.record.key_id

    @property
    def notary_id(self) -> str:
        return self.notary.key_id

    @property
    def quorum(self) -> bool:
        return self.record.quorum


def notary_key_of(record: pb.Key) -> PublicKey:
    """The notary public key for a daemon key: its certificate if it has one, else its SPKI."""
    if record.certificate_pem:
        return certificate_key(record.certificate_pem.encode())
    from cryptography.hazmat.primitives import serialization

    spki = serialization.load_pem_public_key(record.public_key_pem.encode()).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return ecdsa_key(spki)


def raw_signature(der: bytes) -> bytes:
    """ECDSA P-256 DER -> notary's ``r || s`` (32 bytes each)."""
    r, s = decode_dss_signature(der)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


class DaemonKeys:
    """The daemon keys bound to one GUN (repository), by notary key ID."""

    def __init__(self, client: SignerClient, gun: str) -> None:
        self.client = client
        self.gun = gun
        self._records: list[pb.Key] | None = None

    def records(self) -> list[pb.Key]:
        if self._records is None:
            self._records = [
                k
                for k in self.client.list_keys(repository=self.gun, state="active")
                if k.algorithm == pb.ALGORITHM_ECDSA_SHA2_NISTP256
            ]
        return self._records

    def holding(self, notary_keys: Iterable[PublicKey]) -> list[DaemonKey]:
        """The daemon keys among ``notary_keys`` (matched by the canonical key ID, so a root
        key matches whichever of its certificates the metadata lists)."""
        by_canonical = {k.notary_key_id: k for k in self.records() if k.notary_key_id}
        found = []
        for key in notary_keys:
            record = by_canonical.get(key.canonical_id)
            if record is not None:
                found.append(DaemonKey(record, key))
        return found

    def create(self, role: str, label: str, quorum: bool = False) -> DaemonKey:
        """A new P-256 key in the token for ``role`` of this GUN."""
        record = self.client.create_key(label=label, role=role, repository=self.gun, quorum=quorum)
        self._records = None
        if role == "root":
            return self.certify(record)
        return DaemonKey(record, notary_key_of(record))

    def certify(self, record: pb.Key) -> DaemonKey:
        """Issue the root certificate (CN = GUN) notary's trust pinning requires."""
        cert = self.client.issue_certificate(
            record.key_id, self.gun, validity_days=ROOT_CERT_VALIDITY_DAYS
        )
        self._records = None
        return DaemonKey(record, certificate_key(cert.certificate_pem.encode()))

    def get(self, key_id: str) -> pb.Key:
        return self.client.get_key(key_id)

    def retire(self, key_ids: Sequence[str]) -> None:
        for key_id in key_ids:
            self.client.retire_key(key_id)
        self._records = None

    def retire_quietly(self, key_ids: Sequence[str]) -> None:
        """Retire keys a failed operation made (best effort: the failure matters more)."""
        for key_id in key_ids:
            try:
                self.client.retire_key(key_id)
            except Exception:
                pass
        self._records = None

    def sign(self, key: DaemonKey, payload: bytes, role: str, request_id: str = "") -> bytes:
        """Notary's raw signature of ``payload`` for ``role``.

        A quorum key without an approved ``request_id`` raises PendingApprovalError after
        opening a request for exactly these bytes (the ceremony's first step).
        """
        if key.quorum and not request_id:
            request = self.client.request_signature(
                key.key_id, payload, reason=f"{role} metadata of {self.gun}", role=role
            )
            raise PendingApprovalError(role, request)
        response = self.client.sign(key.key_id, payload, request_id=request_id, role=role)
        return raw_signature(response.signature)

    def sign_approved(self, key_id: str, payload: bytes, role: str, request_id: str) -> bytes:
        """The signature an approved quorum request allows."""
        response = self.client.sign(key_id, payload, request_id=request_id, role=role)
        return raw_signature(response.signature)

    def request(self, request_id: str) -> pb.SignatureRequest:
        return self.client.get_signature_request(request_id)
