"""Go's canonical JSON (github.com/docker/go/canonical/json), byte for byte.

Notary signs ``json.MarshalCanonical`` of the ``signed`` object and verifies a signature
by decoding ``signed`` into a generic map and re-encoding it canonically. So the bytes a
signature covers are a function of the *parsed* value alone, and :func:`encode` of a
value parsed with :func:`json.loads` reproduces them exactly. The rules, read from
docker/go's encoder in canonical mode:

- object keys sorted by their UTF-8 bytes (Go sorts map keys and, in canonical mode,
  struct fields by name); no whitespace anywhere;
- strings are written raw: only ``"`` and ``\\`` are escaped. Unlike ``json.Marshal``,
  canonical mode does not escape ``<``, ``>``, ``&``, U+2028/U+2029 or control
  characters, and does not turn invalid UTF-8 into U+FFFD;
- integers in decimal; a float must be integral (Go writes ``int64(f)``) and anything
  else is an error, as in Go. Notary metadata holds no fractional numbers;
- ``bytes`` encode as standard base64 strings, as Go encodes ``[]byte``.

:func:`html_escape` is the other half of notary's output: the envelope around a signed
payload is written with the ordinary ``json.Marshal``, which escapes ``<>&`` and
U+2028/U+2029 inside the embedded payload.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from typing import Any

__all__ = ["CanonicalError", "encode", "html_escape"]


class CanonicalError(ValueError):
    """The value has no canonical JSON form (a fractional float, a non-string key...)."""


def encode(obj: Any) -> bytes:
    """The canonical JSON bytes of ``obj``, exactly as docker/go ``MarshalCanonical``."""
    out: list[bytes] = []
    _encode(obj, out)
    return b"".join(out)


def _encode(obj: Any, out: list[bytes]) -> None:
    if obj is None:
        out.append(b"null")
    elif obj is True:
        out.append(b"true")
    elif obj is False:
        out.append(b"false")
    elif isinstance(obj, str):
        out.append(_string(obj))
    elif isinstance(obj, int):
        out.append(str(int(obj)).encode())
    elif isinstance(obj, float):
        if math.isinf(obj) or math.isnan(obj) or math.floor(obj) != obj:
            raise CanonicalError(f"canonical JSON has no fractional or non-finite numbers: {obj!r}")
        out.append(str(int(obj)).encode())
    elif isinstance(obj, bytes | bytearray | memoryview):
        out.append(b'"' + base64.b64encode(bytes(obj)) + b'"')
    elif isinstance(obj, Mapping):
        items = []
        for key, value in obj.items():
            if not isinstance(key, str):
                raise CanonicalError(f"canonical JSON object keys must be strings: {key!r}")
            items.append((_utf8(key), key, value))
        items.sort(key=lambda item: item[0])
        out.append(b"{")
        for i, (_, key, value) in enumerate(items):
            if i:
                out.append(b",")
            out.append(_string(key))
            out.append(b":")
            _encode(value, out)
        out.append(b"}")
    elif isinstance(obj, list | tuple):
        out.append(b"[")
        for i, value in enumerate(obj):
            if i:
                out.append(b",")
            _encode(value, out)
        out.append(b"]")
    else:
        raise CanonicalError(f"canonical JSON cannot encode {type(obj).__name__}")


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CanonicalError(f"string is not valid UTF-8: {text!r}") from exc


def _string(text: str) -> bytes:
    raw = _utf8(text)
    if b"\\" in raw or b'"' in raw:
        raw = raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
    return b'"' + raw + b'"'


_HTML = {
    b"<": b"\\u003c",
    b">": b"\\u003e",
    b"&": b"\\u0026",
    "\u2028".encode(): b"\\u2028",
    "\u2029".encode(): b"\\u2029",
}


def html_escape(data: bytes) -> bytes:
    """``data`` as Go's ``json.Marshal`` embeds a ``json.RawMessage``: ``<``, ``>``, ``&``,
    U+2028 and U+2029 become ``\\u`` escapes (Go's ``compact(..., escape=true)``)."""
    for char, escaped in _HTML.items():
        if char in data:
            data = data.replace(char, escaped)
    return data
