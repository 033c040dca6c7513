"""ListKeys page tokens: opaque to clients, tied to the filter they were made for.

A token is the position of the last key of a page, (created_at, key_id), the order the
store lists in, plus the filter; so a page never repeats or skips a key when keys are
added meanwhile, and a token replayed with another filter is refused, not misread.
"""

from __future__ import annotations

import base64
import binascii
import json

from signer.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000

Cursor = tuple[float, str]
Filter = tuple[str, str, int]


def page_size(requested: int) -> int:
    """0 means the default; more than the maximum is the maximum (AIP-158)."""
    if requested < 0:
        raise InvalidArgument(f"page_size must not be negative (got {requested})")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode(cursor: Cursor, query: Filter) -> str:
    data = json.dumps({"after": list(cursor), "filter": list(query)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(data.encode()).decode().rstrip("=")


def decode(token: str, query: Filter) -> Cursor | None:
    """The position a page token names; None for the first page. INVALID_ARGUMENT for a
    token this daemon did not make, or made for another filter."""
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        created_at, key_id = data["after"]
        made_for = tuple(data["filter"])
        if not isinstance(created_at, int | float) or not isinstance(key_id, str):
            raise ValueError("bad position")
    except (binascii.Error, ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise InvalidArgument("page_token is not a ListKeys page token") from None
    if made_for != tuple(query):
        raise InvalidArgument("page_token was made for another filter (role, repository, state)")
    return float(created_at), key_id
