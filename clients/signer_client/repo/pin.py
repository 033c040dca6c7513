"""The secrets handler for signers that need a PIN or passphrase (``hsm:`` keys).

securesystemslib asks a ``SecretsHandler`` for secrets instead of reading them itself.
``tuf-repo`` answers from ``TUF_REPO_PIN`` (for scripts and CI, never a command line
option: arguments are visible to every user in ``/proc``), else by prompting on the
terminal. The answer is kept for the rest of the process, so signing a hundred roles
with one token asks once.
"""

from __future__ import annotations

import getpass
import os
import sys

from signer_client.repo.errors import RepositoryError

PIN_ENV = "TUF_REPO_PIN"

_cache: dict[str, str] = {}


class SecretUnavailableError(RepositoryError):
    """A signer needs a secret, and there is neither ``TUF_REPO_PIN`` nor a terminal."""


def secrets_handler(message: str) -> str:
    """Return the secret a signer asks for (``message`` is its prompt, e.g. "pin")."""
    if message in _cache:
        return _cache[message]
    secret = os.environ.get(PIN_ENV)
    if secret is None:
        if not sys.stdin or not sys.stdin.isatty():
            raise SecretUnavailableError(
                f"a signer needs its {message}: set {PIN_ENV} or run from a terminal"
            )
        secret = getpass.getpass(f"{message}: ")
    _cache[message] = secret
    return secret
