"""One strict JSON parser for the payloads clients send (TUF metadata, notary content).

``parse_payload`` accepts exactly what every reasonable JSON reader reads the same way,
so the daemon checks what a TUF client will later see. It refuses, as InvalidArgument:

* bytes that are not UTF-8, and lone surrogates (``"\\ud800"``): no UTF-8 encoding exists
  for them, so they cannot be re-encoded, and readers disagree about what they mean;
* duplicate keys in an object (readers differ: first wins, last wins, error);
* ``NaN``, ``Infinity``, ``-Infinity`` (not JSON), integers of more than
  ``MAX_INT_DIGITS`` digits, and nesting deeper than ``MAX_DEPTH``;
* anything whose top level is not an object.

Text that is not JSON at all raises ``NotJson`` (a subclass of InvalidArgument), so a
caller that also accepts arbitrary bytes (raw signing) can tell "not JSON" from "JSON
that must be refused". Control characters inside strings are accepted, as canonical
JSON (securesystemslib's ``encode_canonical``) writes them unescaped.

This module imports nothing from the signing pipeline.
"""

from __future__ import annotations

import json
import re
from typing import Any

from signer.errors import InvalidArgument, shown

MAX_DEPTH = 100  # objects and arrays inside each other; TUF metadata needs fewer than 10
MAX_INT_DIGITS = 4300  # Python's own limit for int(str) since 3.11

# A surrogate can only enter a decoded str through a \uD800-\uDFFF escape: strict UTF-8
# decoding never yields one. Pairs are joined by the parser; only lone ones survive.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")
_SURROGATE = re.compile("[\ud800-\udfff]")


class NotJson(InvalidArgument):
    """The payload is not JSON text at all (a syntax error), or not a JSON object."""


class _Refused(ValueError):
    """Raised inside the parser's hooks; becomes InvalidArgument."""


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Refused(f"duplicate key {shown(key)} in an object")
            seen.add(key)
    return obj


def _constant(name: str) -> Any:
    raise _Refused(f"{name} is not a JSON number")


def _int(text: str) -> int:
    digits = len(text) - (text[:1] == "-")
    if digits > MAX_INT_DIGITS:
        raise _Refused(f"an integer of {digits} digits (at most {MAX_INT_DIGITS})")
    return int(text)


_DECODER = json.JSONDecoder(
    object_pairs_hook=_object, parse_constant=_constant, parse_int=_int, strict=False
)


def parse_payload(payload: bytes) -> dict[str, Any]:
    """The JSON object ``payload`` holds; InvalidArgument (NotJson for syntax) otherwise."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidArgument(
            f"payload is not valid UTF-8 (byte {exc.start}: {exc.reason})"
        ) from None
    if text.startswith("\ufeff"):
        raise NotJson("payload is not JSON: it starts with a byte order mark")
    try:
        parsed = _DECODER.decode(text)
    except _Refused as exc:
        raise InvalidArgument(f"payload JSON refused: {exc}") from None
    except json.JSONDecodeError as exc:
        raise NotJson(
            f"payload is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise InvalidArgument(
            f"payload JSON refused: nested deeper than {MAX_DEPTH} levels"
        ) from None
    if not isinstance(parsed, dict):
        raise NotJson(f"payload is JSON but not an object (a {type(parsed).__name__})")
    _check_tree(parsed, scan_strings=_SURROGATE_ESCAPE.search(text) is not None)
    return parsed


def _check_tree(root: dict[str, Any], scan_strings: bool) -> None:
    """Depth limit and (when an escape could have made one) lone surrogates; no recursion."""
    stack: list[tuple[Any, int]] = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise InvalidArgument(f"payload JSON refused: nested deeper than {MAX_DEPTH} levels")
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in items:
            if scan_strings and isinstance(key, str) and _SURROGATE.search(key):
                raise _surrogate(key)
            if isinstance(value, dict | list):
                stack.append((value, depth + 1))
            elif scan_strings and isinstance(value, str) and _SURROGATE.search(value):
                raise _surrogate(value)


def _surrogate(value: str) -> InvalidArgument:
    return InvalidArgument(
        f"payload JSON refused: the string {shown(value)} holds a lone surrogate "
        "(a \\ud800-\\udfff escape without its pair), which has no UTF-8 encoding"
    )
