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
    UnauthenticatedError,
    UnavailableError,
)

__all__ = [
    "AlreadyExistsError",
    "ClientConfig",
    "ClientError",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitedError",
    "SignerClient",
    "UnauthenticatedError",
    "UnavailableError",
]
