"""Notary's canonical JSON: what ``github.com/docker/go/canonical/json`` writes.

notary signs ``json.MarshalCanonical(signed)``. Read from that package's source
(``encode.go``, canonical mode), the bytes are:

* objects with their keys sorted (map keys and, in canonical mode, struct fields by
  name), byte order of the UTF-8 (which is code point order);
* no whitespace anywhere;
* strings escaping only ``"`` and ``\\``: in canonical mode every other byte, control
  characters, ``<``, ``>``, ``&``, U+2028 and U+2029 included, is copied as is;
* integers in decimal (floats are refused by canonical mode), ``true``, ``false``,
  ``null``;
* integers beyond 2**53 are refused: notary verifies a signature by decoding ``signed``
  into a generic map (numbers become float64) and re-encoding it canonically, so only
  what survives that round trip is what a notary client will check.

Because of that round trip, the bytes a notary signature covers depend on the parsed
value alone (values with their own ``MarshalJSON``, such as ``FileMeta.custom``, come out
sorted and unescaped like everything else).

``encode(value)`` writes a parsed payload back that way; a payload is notary metadata
only if it is exactly its own re-encoding (see ``signer.policy.notary``).
"""

from __future__ import annotations

from typing import Any

MAX_EXACT_INT = 2**53  # float64 holds every integer up to this


class NotCanonical(ValueError):
    """A value Go's canonical JSON cannot hold (a float, a non-string key)."""


def encode(value: Any) -> bytes:
    """Go canonical JSON of ``value`` (a parsed payload); NotCanonical if it has none."""
    out: list[str] = []
    _value(value, out)
    return "".join(out).encode("utf-8")


def _value(value: Any, out: list[str]) -> None:
    if isinstance(value, dict):
        out.append("{")
        for i, key in enumerate(sorted(value)):
            if not isinstance(key, str):
                raise NotCanonical("object keys must be strings")
            if i:
                out.append(",")
            out.append(_string(key))
            out.append(":")
            _value(value[key], out)
        out.append("}")
    elif isinstance(value, list):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _value(item, out)
        out.append("]")
    elif value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        if abs(value) > MAX_EXACT_INT:
            raise NotCanonical(f"integer {value} does not survive notary's float64 round trip")
        out.append(str(value))
    elif isinstance(value, str):
        out.append(_string(value))
    else:
        raise NotCanonical(f"canonical JSON holds no {type(value).__name__}")


def _string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
