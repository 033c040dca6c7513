"""The daemon's log: plain text by default, or one JSON object per line (``[log]``).

    [log]
    format = "json"     # "text" (default) or "json"
    requests = true     # one line per request (default: with json only)

A request line carries the request id, principal, RPC, key id, outcome, status code and
latency; never a payload, a digest or a PIN (only the fields named in REQUEST_FIELDS
are ever written, whatever a caller passes).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

REQUESTS = logging.getLogger("signer.requests")
_DENIED_CODES = frozenset(("PERMISSION_DENIED", "UNAUTHENTICATED", "RESOURCE_EXHAUSTED"))
REQUEST_FIELDS = ("request_id", "principal", "rpc", "key_id", "outcome", "code", "latency_ms")


@dataclass(frozen=True)
class LogConfig:
    format: str = "text"
    requests: bool | None = None  # None: on with json, off with text

    @property
    def request_lines(self) -> bool:
        return self.requests if self.requests is not None else self.format == "json"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, the process's tag, and
    for request lines exactly REQUEST_FIELDS."""

    def __init__(self, tag: str) -> None:
        super().__init__()
        self.tag = tag

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "process": self.tag,
            "message": record.getMessage(),
        }
        for name in REQUEST_FIELDS:
            if hasattr(record, name):
                line[name] = getattr(record, name)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, separators=(",", ":"), ensure_ascii=False)


def configure(tag: str, level: int, config: LogConfig) -> None:
    handler = logging.StreamHandler()
    if config.format == "json":
        handler.setFormatter(JsonFormatter(tag))
    else:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s {tag} %(levelname)s %(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    REQUESTS.setLevel(logging.INFO if config.request_lines else logging.WARNING)


def new_request_id() -> str:
    return uuid.uuid4().hex[:16]


def log_request(
    request_id: str,
    principal: str,
    rpc: str,
    key_id: str,
    code: str,
    started: float,
) -> None:
    """The request line (call only when ``REQUESTS.isEnabledFor(logging.INFO)``)."""
    # The audit log's and the metrics' words: refused for who asked or how often is
    # denied, anything else that went wrong failed.
    if code == "OK":
        outcome = "allowed"
    elif code in _DENIED_CODES:
        outcome = "denied"
    else:
        outcome = "failed"
    latency_ms = round((time.perf_counter() - started) * 1000, 3)
    REQUESTS.info(
        "%s %s %s %s",
        rpc,
        outcome,
        code,
        principal,
        extra={
            "request_id": request_id,
            "principal": principal,
            "rpc": rpc,
            "key_id": key_id,
            "outcome": outcome,
            "code": code,
            "latency_ms": latency_ms,
        },
    )
