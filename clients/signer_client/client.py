"""The one place that talks to signerd: mTLS channel, deadlines, retries, errors.

Retries: UNAVAILABLE (the token is healing, a worker restarting) is retried with
exponential backoff for calls that are safe to repeat (reads and signatures). Creating
and destroying keys are never retried behind the caller's back. RESOURCE_EXHAUSTED (over
the rate limit) is raised as RateLimitedError, which carries the delay and burst the
daemon names (``tuf_signer.sign_many`` waits and splits batches by them).

TLS problems are named before dialling (``tls.check_files``) or, after a failed call,
by repeating the handshake with Python's ``ssl`` (``tls.diagnose``); gRPC's C-core log
is kept to errors (``GRPC_VERBOSITY``, unless set) so it does not bury the one line.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # read by grpc at import

import grpc

from signer_api.v1 import signer_pb2 as pb
from signer_api.v1 import signer_pb2_grpc as pb_grpc
from signer_client.config import ClientConfig
from signer_client.errors import (
    ClientError,
    UnavailableError,
    from_code,
    from_rpc_error,
)
from signer_client.tls import check_files, diagnose

T = TypeVar("T")
_CONNECT_FAILURES = ("failed to connect", "socket closed", "handshake", "connection refused")

ALGORITHMS = {
    "ecdsa-sha2-nistp256": pb.ALGORITHM_ECDSA_SHA2_NISTP256,
    "ecdsa-sha2-nistp384": pb.ALGORITHM_ECDSA_SHA2_NISTP384,
    "ed25519": pb.ALGORITHM_ED25519,
    "rsassa-pss-sha256": pb.ALGORITHM_RSASSA_PSS_SHA256,
}
STATES = {
    "active": pb.KEY_STATE_ACTIVE,
    "retired": pb.KEY_STATE_RETIRED,
    "destroyed": pb.KEY_STATE_DESTROYED,
}


@dataclass(frozen=True)
class BatchResult:
    """One item of a SignBatch: a signature, or the error for that item."""

    key_id: str
    signature: bytes
    scheme: str
    error: ClientError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def secure_channel(config: ClientConfig) -> grpc.Channel:
    check_files(config)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=config.ca.read_bytes(),
        private_key=config.key.read_bytes(),
        certificate_chain=config.cert.read_bytes(),
    )
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", 256 * 1024 * 1024),
        ("grpc.max_send_message_length", 256 * 1024 * 1024),
    ]
    if config.server_name:
        options.append(("grpc.ssl_target_name_override", config.server_name))
    return grpc.secure_channel(config.address, credentials, options=options)


class SignerClient:
    """A connection to signerd. Thread-safe; reuse one per process."""

    def __init__(self, config: ClientConfig, channel: grpc.Channel | None = None) -> None:
        self.config = config
        self.channel = channel or secure_channel(config)
        self.keys = pb_grpc.KeyServiceStub(self.channel)
        self.signing = pb_grpc.SigningServiceStub(self.channel)
        self.max_batch: int | None = None  # the principal's burst, once the daemon said it

    @classmethod
    def from_env(cls, address: str | None = None) -> SignerClient:
        return cls(ClientConfig.from_env(address))

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> SignerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- keys ------------------------------------------------------------------------------

    def create_key(
        self,
        label: str,
        algorithm: str = "ecdsa-sha2-nistp256",
        role: str = "targets",
        repository: str = "",
        quorum: bool = False,
    ) -> pb.Key:
        if algorithm not in ALGORITHMS:
            known = ", ".join(ALGORITHMS)
            raise from_code(
                grpc.StatusCode.INVALID_ARGUMENT, f"unknown algorithm {algorithm!r}; known: {known}"
            )
        request = pb.CreateKeyRequest(
            label=label,
            algorithm=ALGORITHMS[algorithm],  # type: ignore[arg-type]
            role=role,
            repository=repository,
            quorum=quorum,
        )
        return self._call(self.keys.CreateKey, request, retry=False).key

    def get_key(self, key_id: str) -> pb.Key:
        return self._call(self.keys.GetKey, pb.GetKeyRequest(key_id=key_id)).key

    def list_keys(
        self, role: str = "", repository: str = "", state: str = "", page_size: int = 0
    ) -> list[pb.Key]:
        """Every matching key the caller may read, oldest first: all pages, fetched here.

        ``page_size`` 0 leaves the page size to the daemon. Each page is its own call
        (retried alone); a key added meanwhile comes once, on the last page.
        """
        keys: list[pb.Key] = []
        token = ""
        while True:
            request = pb.ListKeysRequest(
                role=role,
                repository=repository,
                state=STATES.get(state, pb.KEY_STATE_UNSPECIFIED),  # type: ignore[arg-type]
                page_size=page_size,
                page_token=token,
            )
            response = self._call(self.keys.ListKeys, request)
            keys.extend(response.keys)
            token = response.next_page_token
            if not token:
                return keys

    def retire_key(self, key_id: str) -> pb.Key:
        request = pb.RetireKeyRequest(key_id=key_id)
        return self._call(self.keys.RetireKey, request, retry=False).key

    def destroy_key(self, key_id: str, confirm: str) -> pb.Key:
        request = pb.DestroyKeyRequest(key_id=key_id, confirm=confirm)
        return self._call(self.keys.DestroyKey, request, retry=False).key

    def issue_certificate(
        self, key_id: str, common_name: str, validity_days: int = 0
    ) -> pb.Certificate:
        """A self-signed certificate for the key, signed in the token (notary's root cert)."""
        request = pb.IssueCertificateRequest(
            key_id=key_id, common_name=common_name, validity_days=validity_days
        )
        return self._call(self.keys.IssueCertificate, request, retry=False).certificate

    # -- signing ---------------------------------------------------------------------------

    def sign(
        self, key_id: str, payload: bytes, request_id: str = "", role: str = ""
    ) -> pb.SignResponse:
        """``role``: the metadata role the payload is for (empty: the key's own role)."""
        request = pb.SignRequest(key_id=key_id, payload=payload, request_id=request_id, role=role)
        return self._call(self.signing.Sign, request)

    def sign_digest(self, key_id: str, digest: bytes) -> pb.SignResponse:
        return self._call(self.signing.Sign, pb.SignRequest(key_id=key_id, digest=digest))

    def sign_batch(
        self, key_id: str, payloads: Sequence[bytes] | Iterable[bytes]
    ) -> list[BatchResult]:
        items = [pb.SignBatchItem(payload=p) for p in payloads]
        response = self._call(
            self.signing.SignBatch, pb.SignBatchRequest(key_id=key_id, items=items)
        )
        return [_batch_result(r) for r in response.results]

    def sign_batch_items(
        self, items: Sequence[tuple[str, bytes] | tuple[str, bytes, str]]
    ) -> list[BatchResult]:
        """One SignBatch where each (key_id, payload) or (key_id, payload, role) item names
        its own key (and the metadata role it is for)."""
        request = pb.SignBatchRequest(
            items=[
                pb.SignBatchItem(
                    key_id=item[0], payload=item[1], role=item[2] if len(item) > 2 else ""
                )
                for item in items
            ]
        )
        response = self._call(self.signing.SignBatch, request)
        results = [_batch_result(r) for r in response.results]
        # a failed item carries no key_id on the wire: name the key the caller asked for
        return [
            replace(r, key_id=item[0]) if r.error else r
            for r, item in zip(results, items, strict=True)
        ]

    def request_signature(
        self, key_id: str, payload: bytes, reason: str = "", role: str = ""
    ) -> pb.SignatureRequest:
        request = pb.RequestSignatureRequest(
            key_id=key_id, payload=payload, reason=reason, role=role
        )
        return self._call(self.signing.RequestSignature, request, retry=False).signature_request

    def approve(self, request_id: str, payload_sha256: str) -> pb.SignatureRequest:
        request = pb.ApproveRequest(request_id=request_id, payload_sha256=payload_sha256)
        return self._call(self.signing.Approve, request).signature_request

    def get_signature_request(self, request_id: str) -> pb.SignatureRequest:
        request = pb.GetSignatureRequestRequest(request_id=request_id)
        return self._call(self.signing.GetSignatureRequest, request).signature_request

    # -- plumbing --------------------------------------------------------------------------

    def _call(self, method: Callable[..., T], request: Any, retry: bool = True) -> T:
        attempts = 1 + (self.config.retries if retry else 0)
        delay = 0.1
        attempt = 0
        while True:
            try:
                return method(request, timeout=self.config.timeout)
            except grpc.RpcError as exc:
                error = from_rpc_error(exc)
            attempt += 1
            if not isinstance(error, UnavailableError) or attempt >= attempts:
                raise self._explained(error) from None
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 3.0)

    def _explained(self, error: ClientError) -> ClientError:
        """A connection failure replaced by what is wrong with it, where that can be told."""
        if not isinstance(error, UnavailableError) or not any(
            text in error.message.lower() for text in _CONNECT_FAILURES
        ):
            return error
        try:
            reason = diagnose(self.config)
        except Exception:  # the diagnosis is a courtesy; never hide the real error
            return error
        if reason is None:
            return error
        return UnavailableError(f"cannot use signerd at {self.config.address}: {reason}")


def _batch_result(result: pb.SignBatchResult) -> BatchResult:
    if result.status.code != 0:
        code = grpc.StatusCode.UNKNOWN
        for candidate in grpc.StatusCode:
            if candidate.value[0] == result.status.code:
                code = candidate
        return BatchResult("", b"", "", from_code(code, result.status.message))
    return BatchResult(result.key_id, result.signature, result.scheme)


def tuf_key(key: pb.Key) -> Any:
    """The securesystemslib key for a daemon key, checked against its key_id.

    ``tuf_key_json`` is canonical JSON (raw newlines inside PEM strings), hence
    ``strict=False``; the key_id must be the sha256 of exactly those bytes.
    """
    import hashlib
    import json

    from securesystemslib.signer import SSlibKey

    if hashlib.sha256(key.tuf_key_json.encode()).hexdigest() != key.key_id:
        raise from_code(
            grpc.StatusCode.DATA_LOSS, f"key {key.key_id}: key_id does not match its key"
        )
    return SSlibKey.from_dict(key.key_id, json.loads(key.tuf_key_json, strict=False))
