"""Keys from signerd as ``KeyRef``s: look up by key_id, or create with the right role.

Keys are created with the TUF role they will sign for (the daemon may refuse payloads
whose ``_type`` or delegated role differs). Hash bins share one key set, created with
role = the bin prefix (e.g. "bins"): one key per bin would make thousands of keys, and
no single bin name fits a shared key.
"""

from __future__ import annotations

from signer_client.client import SignerClient, tuf_key
from signer_client.repo.errors import RepositoryError
from signer_client.repo.signing import KeyRef
from signer_client.tuf_signer import key_uri


class DaemonKeys:
    """Key lookup and creation on one daemon, handing out ``signer://`` URIs."""

    def __init__(self, client: SignerClient, address: str | None = None) -> None:
        self.client = client
        self.address = address or client.config.address

    def get(self, key_id: str, role: str | None = None) -> KeyRef:
        """The key, checked (if ``role`` is given) to be one the daemon lets sign for it.

        The daemon's payload rules bind a key to the ``_type`` of its role (delegated
        roles sign ``targets``); catching a mismatch here beats a refused signature later.
        """
        key = self.client.get_key(key_id)
        if role is not None and _signs(key.role) != _signs(role):
            raise RepositoryError(
                f"key {key_id} is bound to role {key.role!r} in the daemon and signs only "
                f"{_signs(key.role)!r} metadata; {role} needs {_signs(role)!r}"
            )
        return KeyRef(tuf_key(key), key_uri(self.address, key_id))

    def create(
        self,
        role: str,
        algorithm: str = "ecdsa-sha2-nistp256",
        label: str = "",
        repository: str = "",
    ) -> KeyRef:
        key = self.client.create_key(
            label or f"{repository or 'tuf'}-{role}", algorithm, role=role, repository=repository
        )
        return KeyRef(tuf_key(key), key_uri(self.address, key.key_id))


def _signs(role: str) -> str:
    """The ``_type`` a key bound to ``role`` may sign (the daemon's rule)."""
    return role if role in ("root", "targets", "snapshot", "timestamp") else "targets"
