"""Thin clients of signerd: a connection library, a securesystemslib Signer, ``tuf-repo``."""

from signer_client.client import SignerClient
from signer_client.config import ClientConfig
from signer_client.errors import (
    AlreadyExistsError,
    ClientError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    SignatureMismatchError,
    UnauthenticatedError,
    UnavailableError,
)
from signer_client.tuf_signer import DaemonSigner  # registers the signer:// URI scheme

__all__ = [
    "AlreadyExistsError",
    "ClientConfig",
    "ClientError",
    "DaemonSigner",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitedError",
    "SignatureMismatchError",
    "SignerClient",
    "UnauthenticatedError",
    "UnavailableError",
]
