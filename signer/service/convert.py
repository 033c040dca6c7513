"""Registry records <-> signer_api.v1 messages."""

from __future__ import annotations

from functools import lru_cache

from google.protobuf.timestamp_pb2 import Timestamp

from signer.certificates import certificate_key_id
from signer.errors import InvalidArgument
from signer.notary import keys as nkeys
from signer.registry import KeyRecord, KeyState
from signer_api.v1 import signer_pb2 as pb

ALGORITHM_NAMES: dict[int, str] = {
    pb.ALGORITHM_ECDSA_SHA2_NISTP256: "ecdsa-sha2-nistp256",
    pb.ALGORITHM_ECDSA_SHA2_NISTP384: "ecdsa-sha2-nistp384",
    pb.ALGORITHM_ED25519: "ed25519",
    pb.ALGORITHM_RSASSA_PSS_SHA256: "rsassa-pss-sha256",
}
ALGORITHM_ENUMS = {name: value for value, name in ALGORITHM_NAMES.items()}

STATE_ENUMS = {
    KeyState.ACTIVE: pb.KEY_STATE_ACTIVE,
    KeyState.RETIRED: pb.KEY_STATE_RETIRED,
    KeyState.DESTROYED: pb.KEY_STATE_DESTROYED,
}
STATE_NAMES: dict[int, str] = {int(value): state.value for state, value in STATE_ENUMS.items()}


def algorithm_name(value: int) -> str:
    try:
        return ALGORITHM_NAMES[value]
    except KeyError:
        known = ", ".join(pb.Algorithm.Name(v) for v in ALGORITHM_NAMES)
        raise InvalidArgument(f"unknown or unspecified algorithm {value}; known: {known}") from None


def state_name(value: int) -> str:
    if value == pb.KEY_STATE_UNSPECIFIED:
        return ""
    try:
        return STATE_NAMES[value]
    except KeyError:
        raise InvalidArgument(f"unknown key state {value}") from None


def timestamp(seconds: float | None) -> Timestamp | None:
    if seconds is None:
        return None
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def key_message(record: KeyRecord) -> pb.Key:
    alg = record.algorithm
    return pb.Key(
        key_id=record.key_id,
        algorithm=ALGORITHM_ENUMS[alg.name],  # type: ignore[arg-type]
        scheme=alg.scheme,
        keytype=alg.keytype,
        public_key_pem=record.public_key_pem,
        tuf_key_json=record.tuf_key_json,
        label=record.label,
        role=record.role,
        repository=record.repository,
        state=STATE_ENUMS[record.state],  # type: ignore[arg-type]
        created_at=timestamp(record.created_at),
        retired_at=timestamp(record.retired_at),
        quorum=record.quorum,
        notary_key_id=notary_key_id(record.algorithm_name, record.public_key_pem),
        certificate_pem=record.certificate_pem,
        certificate_key_id=certificate_key_id(record.certificate_pem),
    )


@lru_cache(maxsize=4096)
def notary_key_id(algorithm: str, public_key_pem: str) -> str:
    """notary's key ID of the public key (``ecdsa`` P-256, ``ed25519``), else empty."""
    alg = nkeys.BY_SIGNER_ALGORITHM.get(algorithm)
    if alg is None:
        return ""
    public = nkeys.public_bytes(nkeys.public_key_from_pem(public_key_pem))
    return nkeys.key_id(alg.name, public)
