"""Build and publish TUF repositories whose keys live in signerd (the ``tuf-repo`` core)."""

from signer_client.repo.daemon_keys import DaemonKeys
from signer_client.repo.errors import RepositoryError, UnderSignedError
from signer_client.repo.external import OfflineSigner  # registers the offline: scheme
from signer_client.repo.files import collect_files
from signer_client.repo.model import PublishResult, RoleSpec, RoleStatus, ThresholdCheck
from signer_client.repo.repository import Repository
from signer_client.repo.signing import KeyRef, SigningStats
from signer_client.repo.store import RepoConfig, RepoStore
from signer_client.repo.verify import verify

__all__ = [
    "DaemonKeys",
    "KeyRef",
    "OfflineSigner",
    "PublishResult",
    "RepoConfig",
    "RepoStore",
    "Repository",
    "RepositoryError",
    "RoleSpec",
    "RoleStatus",
    "SigningStats",
    "ThresholdCheck",
    "UnderSignedError",
    "collect_files",
    "verify",
]
