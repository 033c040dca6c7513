"""Re-walk the audit chain and its signed checkpoints; say exactly what was tampered with.

Reads the SQLite files directly (read-only), so it works with the daemon running or not.
Every row's hash is recomputed from its contents, its sequence number and the previous
row's hash. A row whose hash does not match is *edited*; a row whose hash matches only
under another sequence number was *moved*, which tells an insertion (later rows shifted
up), a deletion with renumbering (shifted down) and a reordering (rows swapped) apart; a
gap in the numbering is a *deletion*. Finally every checkpoint's signature is checked
with the audit key and its (seq, hash) against the row it covers, which catches a chain
rebuilt after an edit, and a truncated tail up to the last checkpoint.

Limit: entries after the last checkpoint can be removed or appended without trace, as
can anything if the attacker also controls the audit key's registry entry; pin the
audit key id (``--audit-key-id``) to guard against the latter.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from securesystemslib.signer import Signature

from signer.algorithms import key_from_json
from signer.audit.checkpoint import CHECKPOINT_TYPE
from signer.audit.log import GENESIS, entry_hash
from signer.keys import AUDIT_ROLE

_COLUMNS = (
    "seq",
    "time",
    "principal",
    "operation",
    "key_id",
    "role",
    "repository",
    "payload_sha256",
    "outcome",
    "code",
    "detail",
    "request_id",
    "prev_hash",
    "hash",
)


@dataclass(frozen=True)
class Problem:
    kind: str  # edited, deleted, inserted, reordered, checkpoint
    seq: int
    message: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


@dataclass
class Report:
    entries: int = 0
    checkpoints: int = 0
    last_checkpoint_seq: int = 0
    tip_seq: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def kinds(self) -> set[str]:
        return {p.kind for p in self.problems}

    def summary(self) -> str:
        if not self.ok:
            return f"FAILED: {len(self.problems)} problem(s) in {self.entries} entries"
        text = (
            f"OK: {self.entries} entries, chain intact, {self.checkpoints} signed "
            f"checkpoint(s) verified"
        )
        if self.checkpoints:
            text += f" (the last covers entry {self.last_checkpoint_seq})"
        if self.tip_seq > self.last_checkpoint_seq:
            text += (
                f"; entries {self.last_checkpoint_seq + 1}-{self.tip_seq} are not yet covered "
                "by a checkpoint"
            )
        return text


def open_readonly(path: Path) -> sqlite3.Connection:
    if not path.exists():
        raise FileNotFoundError(f"no such database: {path}")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    return conn


def rows(conn: sqlite3.Connection, since: int = 0) -> Iterator[dict[str, Any]]:
    cursor = conn.execute(
        f"SELECT {', '.join(_COLUMNS)} FROM audit WHERE seq > ? ORDER BY seq", (since,)
    )
    for row in cursor:
        yield dict(row)


def _body(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in ("seq", "prev_hash", "hash")}


def _valid_at(row: dict[str, Any], seq: int) -> bool:
    return entry_hash(row["prev_hash"], seq, _body(row)) == row["hash"]


def verify_chain(entries: list[dict[str, Any]]) -> list[Problem]:
    problems: list[Problem] = []
    by_hash = {r["hash"]: r for r in entries}
    original: dict[int, int | None] = {}  # storage seq -> the seq its hash was made for

    def original_seq(row: dict[str, Any], depth: int = 0) -> int | None:
        seq = row["seq"]
        if seq in original:
            return original[seq]
        found: int | None = None
        if _valid_at(row, seq):
            found = seq
        else:
            candidates = []
            if row["prev_hash"] == GENESIS:
                candidates.append(1)
            elif row["prev_hash"] in by_hash and depth < 50:
                before = original_seq(by_hash[row["prev_hash"]], depth + 1)
                if before is not None:
                    candidates.append(before + 1)
            candidates += [seq + d for d in range(-8, 9) if d]
            found = next((c for c in candidates if c > 0 and _valid_at(row, c)), None)
        original[seq] = found
        return found

    moved: list[tuple[int, int]] = []  # (stored at, written as)
    prev_seq, prev_hash = 0, GENESIS
    for row in entries:
        seq = row["seq"]
        written = original_seq(row)
        if written is None:
            problems.append(
                Problem(
                    "edited", seq, f"entry {seq} was edited: its contents do not match its hash"
                )
            )
        elif written != seq:
            moved.append((seq, written))
        elif seq != prev_seq + 1:  # seq is assigned inside the commit: gaps never happen
            gone = f"{prev_seq + 1}" if seq == prev_seq + 2 else f"{prev_seq + 1}-{seq - 1}"
            problems.append(
                Problem(
                    "deleted",
                    prev_seq + 1,
                    f"entry {gone} deleted: the chain jumps from entry {prev_seq} to entry {seq}",
                )
            )
        elif row["prev_hash"] != prev_hash and prev_seq and original.get(prev_seq) == prev_seq:
            problems.append(
                Problem(
                    "edited",
                    prev_seq,
                    f"entry {prev_seq} was replaced (edited and "
                    f"re-hashed): entry {seq} was chained to a different entry {prev_seq}",
                )
            )
        prev_seq, prev_hash = seq, row["hash"]
    problems += _classify_moves(moved, {r["seq"] for r in entries})
    return sorted(problems, key=lambda p: p.seq)


def _classify_moves(moved: list[tuple[int, int]], present: set[int]) -> list[Problem]:
    """Rows whose hash fits another position: inserted, deleted (renumbered) or reordered."""
    if not moved:
        return []
    stored = {at for at, _ in moved}
    written = {was for _, was in moved}
    shifts = {at - was for at, was in moved}
    at, was = min(moved)
    if stored == written or (any(s > 0 for s in shifts) and any(s < 0 for s in shifts)):
        where = ", ".join(str(a) for a, _ in sorted(moved))
        return [
            Problem(
                "reordered",
                at,
                f"entries {where} were reordered: each holds the entry written at another position",
            )
        ]
    if at > was:  # shifted up: something now sits where this entry was written
        extra = sorted(s for s in range(was, at) if s in present and s not in stored)
        where = ", ".join(map(str, extra)) or str(was)
        return [
            Problem(
                "inserted",
                was,
                f"entry {where} was inserted: entry {at} was written as "
                f"entry {was} and later entries were renumbered",
            )
        ]
    return [
        Problem(
            "deleted",
            at,
            f"entry {at} (or several from there) was deleted and later "
            f"entries renumbered: entry {at} was written as entry {was}",
        )
    ]


def verify_checkpoints(
    conn: sqlite3.Connection,
    entries_by_seq: dict[int, dict[str, Any]],
    keys_db: Path | None,
    audit_key_id: str | None = None,
) -> tuple[int, int, list[Problem]]:
    """Check each checkpoint's signature and that the chain still holds what it signed."""
    problems: list[Problem] = []
    try:
        checkpoints = [
            dict(r)
            for r in conn.execute(
                "SELECT id, seq, hash, key_id, body, signature FROM audit_checkpoints ORDER BY id"
            )
        ]
    except sqlite3.OperationalError:
        return 0, 0, []
    keys = _audit_keys(keys_db)
    last_seq = 0
    for cp in checkpoints:
        seq = int(cp["seq"])
        label = f"checkpoint {cp['id']} (entry {seq})"
        key = keys.get(cp["key_id"])
        if audit_key_id and cp["key_id"] != audit_key_id:
            problems.append(
                Problem(
                    "checkpoint",
                    seq,
                    f"{label} is signed by key {cp['key_id']}, not the pinned audit key",
                )
            )
            continue
        if key is None:
            problems.append(
                Problem(
                    "checkpoint",
                    seq,
                    f"{label} is signed by key {cp['key_id']}, which is not a registered audit key",
                )
            )
            continue
        try:
            body = json.loads(cp["body"])
            body_ok = body == {
                "_type": CHECKPOINT_TYPE,
                "hash": cp["hash"],
                "seq": seq,
                "time": body["time"],
            }
        except (ValueError, KeyError, TypeError):
            body_ok = False
        signature = Signature(cp["key_id"], cp["signature"])
        try:
            key.verify_signature(signature, cp["body"].encode())
            sig_ok = True
        except Exception:
            sig_ok = False
        if not (body_ok and sig_ok):
            problems.append(
                Problem("checkpoint", seq, f"{label}: bad signature, or its fields were edited")
            )
            continue
        row = entries_by_seq.get(seq)
        if row is None:
            problems.append(Problem("deleted", seq, f"entry {seq} was deleted: {label} signed it"))
        elif row["hash"] != cp["hash"]:
            problems.append(
                Problem(
                    "edited",
                    seq,
                    f"entries up to {seq} were rewritten: "
                    f"entry {seq} no longer has the hash {label} signed",
                )
            )
        last_seq = max(last_seq, seq)
    return len(checkpoints), last_seq, problems


def _audit_keys(keys_db: Path | None) -> dict[str, Any]:
    if keys_db is None or not keys_db.exists():
        return {}
    conn = open_readonly(keys_db)
    try:
        found = {}
        for row in conn.execute(
            "SELECT key_id, tuf_key_json FROM keys WHERE role = ?", (AUDIT_ROLE,)
        ):
            import hashlib

            if hashlib.sha256(row["tuf_key_json"].encode()).hexdigest() == row["key_id"]:
                found[row["key_id"]] = key_from_json(row["key_id"], row["tuf_key_json"])
        return found
    finally:
        conn.close()


def verify(audit_db: Path, keys_db: Path | None = None, audit_key_id: str | None = None) -> Report:
    conn = open_readonly(audit_db)
    try:
        conn.execute("BEGIN")  # one consistent snapshot of entries and checkpoints
        entries = list(rows(conn))
        report = Report(entries=len(entries), tip_seq=entries[-1]["seq"] if entries else 0)
        report.problems = verify_chain(entries)
        count, last, problems = verify_checkpoints(
            conn, {r["seq"]: r for r in entries}, keys_db, audit_key_id
        )
        conn.execute("COMMIT")
    finally:
        conn.close()
    report.checkpoints, report.last_checkpoint_seq = count, last
    seen = {(p.kind, p.seq) for p in report.problems}
    report.problems += [p for p in problems if (p.kind, p.seq) not in seen]
    return report


def export(audit_db: Path, out: Any, since: int = 0) -> int:
    """Write entries as JSON lines (one object per entry, in order); returns the count."""
    conn = open_readonly(audit_db)
    count = 0
    try:
        for row in rows(conn, since):
            out.write(json.dumps(row, sort_keys=True) + "\n")
            count += 1
    finally:
        conn.close()
    return count
