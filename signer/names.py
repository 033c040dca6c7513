"""Names a client gives keys: labels, roles, repositories, each matched whole.

``re.fullmatch``, never ``re.match`` with ``$`` (which also accepts a trailing newline:
``"targets\\n"`` would pass, and then match no ``roles = ["targets"]`` rule). The
character sets are those ``signer/keys.py`` has always enforced.
"""

from __future__ import annotations

import re

from signer.errors import InvalidArgument

_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/ -]{0,127}")
_ROLE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,127}")
_REPOSITORY = re.compile(r"[A-Za-z0-9._/:-]{0,255}")


def check_label(label: str) -> None:
    """InvalidArgument unless ``label`` is 1-128 characters of the label set."""
    if not _LABEL.fullmatch(label):
        raise InvalidArgument(
            "label must be 1-128 characters: letters, digits and . _ : @ / - or space"
        )


def check_role(role: str) -> None:
    """InvalidArgument unless ``role`` is 1-128 characters of the role set."""
    if not _ROLE.fullmatch(role):
        raise InvalidArgument(
            "role must be 1-128 characters: letters, digits and . _ / - "
            "(root, targets, snapshot, timestamp or a delegated role name)"
        )


def check_repository(repository: str) -> None:
    """InvalidArgument unless ``repository`` is 0-256 characters of the repository set."""
    if not _REPOSITORY.fullmatch(repository):
        raise InvalidArgument("repository may hold letters, digits and . _ / : - only")
