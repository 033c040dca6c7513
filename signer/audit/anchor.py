"""Anchors: every signed checkpoint also goes to an append-only sink outside the database.

A checkpoint in ``audit.db`` proves the chain up to it, but whoever can rewrite the file
can also delete the last checkpoints and the entries after them (truncation), or append
forged entries after the last one left. A copy of each checkpoint kept elsewhere (another
disk, a log shipper, syslog) closes that gap: ``signerd audit verify --anchor FILE``
requires every anchored checkpoint to be in the database, unchanged, and the chain to
reach at least the last anchored entry.

Two sinks, configured in ``[audit]``: ``anchor_file`` (a JSON line per checkpoint,
appended with O_APPEND and fsync'd) and ``anchor_command`` (run once per checkpoint, the
JSON line on its standard input, e.g. ``["logger", "-t", "signerd"]``).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class AnchoredCheckpoint:
    """A checkpoint as written to the database and to the anchor."""

    id: int
    seq: int
    hash: str
    key_id: str
    body: str  # the signed canonical JSON
    signature: str  # hex

    def line(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")) + "\n"


class Anchor(Protocol):
    def write(self, checkpoint: AnchoredCheckpoint) -> None:
        """Store the checkpoint durably; raise OSError if it could not be."""


class FileAnchor:
    """Appends one JSON line per checkpoint (O_APPEND, one write, fsync)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, checkpoint: AnchoredCheckpoint) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            data = checkpoint.line().encode()
            if os.write(fd, data) != len(data):  # one write: lines of workers never mix
                raise OSError(f"short write to the anchor file {self.path}")
            os.fsync(fd)
        finally:
            os.close(fd)


class CommandAnchor:
    """Runs a command per checkpoint with the JSON line on stdin; non-zero exit fails."""

    def __init__(self, argv: Sequence[str], timeout: float = 10.0) -> None:
        self.argv = list(argv)
        self.timeout = timeout

    def write(self, checkpoint: AnchoredCheckpoint) -> None:
        try:
            done = subprocess.run(
                self.argv,
                input=checkpoint.line().encode(),
                capture_output=True,
                timeout=self.timeout,
                check=False,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise OSError(f"anchor command {self.argv[0]!r} failed: {exc}") from exc
        if done.returncode != 0:
            err = done.stderr.decode(errors="replace").strip().splitlines()
            raise OSError(
                f"anchor command {self.argv[0]!r} exited {done.returncode}"
                + (f": {err[-1][:200]}" if err else "")
            )


class Anchors:
    """All configured sinks; a checkpoint counts as anchored once every sink has it."""

    def __init__(self, sinks: Sequence[Anchor]) -> None:
        self.sinks = list(sinks)

    def write(self, checkpoint: AnchoredCheckpoint) -> None:
        for sink in self.sinks:
            sink.write(checkpoint)


def read_anchor_file(path: Path) -> Iterator[tuple[int, AnchoredCheckpoint | str]]:
    """(line number, checkpoint) per line, or (line number, what is wrong with it).

    A last line without its newline (the writer died mid-write) is reported like any
    other unreadable line; it never counts as an anchor."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, text in enumerate(f, 1):
            if not text.strip():
                continue
            if not text.endswith("\n"):
                yield number, "incomplete last line"
                continue
            try:
                data: Any = json.loads(text)
                yield (
                    number,
                    AnchoredCheckpoint(
                        id=int(data["id"]),
                        seq=int(data["seq"]),
                        hash=str(data["hash"]),
                        key_id=str(data["key_id"]),
                        body=str(data["body"]),
                        signature=str(data["signature"]),
                    ),
                )
            except (ValueError, KeyError, TypeError):
                yield number, "not a checkpoint record"
