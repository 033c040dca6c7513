"""Repository errors: the second error root, beside ``signer_client.errors.ClientError``.

``ClientError`` means the daemon said no (or was unreachable); ``RepositoryError`` means
the repository cannot do what was asked (bad arguments, missing signatures, bad state).
"""

from __future__ import annotations


class RepositoryError(Exception):
    """Root of every error raised by the repository logic."""


class UnderSignedError(RepositoryError):
    """A role lacks signatures for its threshold; nothing was published.

    Signatures already collected are kept in the staging area, so the next ``sign`` or
    ``publish`` only adds the missing ones.
    """

    def __init__(self, missing: dict[str, str], errors: dict[str, str] | None = None) -> None:
        self.missing = missing  # role -> what is missing
        self.errors = errors or {}  # "role/key_id" -> why that key did not sign
        details = "; ".join(f"{role}: {what}" for role, what in sorted(missing.items()))
        super().__init__(f"not enough signatures, nothing published ({details})")
