"""Re-walk the audit chain and its signed checkpoints; say exactly what was tampered with.

Reads the SQLite files directly (read-only), so it works with the daemon running or not.
Every row's hash is recomputed from its contents, its sequence number and the previous
row's hash. A row whose hash does not match is *edited*; a row whose hash matches only
under another sequence number was *moved*, which tells an insertion (later rows shifted
up), a deletion with renumbering (shifted down) and a reordering (rows swapped) apart; a
gap in the numbering is a *deletion*. Finally every checkpoint's signature is checked
with the audit key and its (seq, hash) against the row it covers, which catches a chain
rebuilt after an edit, and a truncated tail up to the last checkpoint. Checkpoint ids
must run 1, 2, 3... without a gap, and the chain may not run further past the last
checkpoint than the configured cadence allows (``CheckpointSettings.allowed_tail``): so
deleting checkpoints does not make the chain rewritable.

With an anchor file (``--anchor``, the checkpoints the daemon also wrote outside the
database), every anchored checkpoint must be in the database unchanged and the chain
must reach the last anchored entry: a truncated tail shows. Without one, entries after
the last checkpoint (within the cadence) can be removed or appended without trace, as
can anything if the attacker also controls the audit key's registry entry; pin the
audit key id (``--audit-key-id``) to guard against the latter.

This module reads the key registry's one table it needs itself (read-only, by path),
so the audit package imports no key code.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from securesystemslib.signer import Key, Signature

from signer.algorithms import key_from_json
from signer.audit.anchor import AnchoredCheckpoint, read_anchor_file
from signer.audit.checkpoint import (
    CHECKPOINT_TYPE,
    AuditKeys,
    CheckpointSettings,
    CheckpointVerifier,
)
from signer.audit.log import AUDIT_ROLE, GENESIS, entry_hash
from signer.errors import StorageUnavailable

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
    kind: str  # edited, deleted, inserted, reordered, checkpoint, uncovered, truncated, anchor
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
    anchors: int = 0  # anchored checkpoints checked against the database
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
        if self.anchors:
            text += f", {self.anchors} anchored checkpoint(s) found in the database"
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


def damaged(path: Path, exc: sqlite3.Error) -> StorageUnavailable:
    """One line for a file that is not (or no longer) a readable audit database."""
    return StorageUnavailable(
        f"cannot read {path}: {exc} (a damaged file, or not a signerd database)"
    )


class PublicAuditKey:
    """A ``CheckpointVerifier`` for a key registered with role ``audit``."""

    def __init__(self, key: Key) -> None:
        self.key = key

    def verify(self, message: bytes, signature: bytes) -> bool:
        try:
            self.key.verify_signature(Signature(self.key.keyid, signature.hex()), message)
        except Exception:
            return False
        return True


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
    keys: AuditKeys,
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
    problems += _missing_ids([int(cp["id"]) for cp in checkpoints])
    last_seq = 0
    for cp in checkpoints:
        seq = int(cp["seq"])
        label = f"checkpoint {cp['id']} (entry {seq})"
        trouble = _signed_properly(cp, keys, audit_key_id, label)
        if trouble:
            problems.append(Problem("checkpoint", seq, trouble))
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


def _missing_ids(ids: list[int]) -> list[Problem]:
    """Checkpoints are numbered 1, 2, 3...: a gap is a deleted checkpoint."""
    problems = []
    expected = 1
    for cp_id in ids:
        if cp_id > expected:
            gone = str(expected) if cp_id == expected + 1 else f"{expected}-{cp_id - 1}"
            problems.append(
                Problem(
                    "checkpoint",
                    0,
                    f"checkpoint {gone} deleted: the checkpoint ids jump "
                    f"from {expected - 1} to {cp_id}",
                )
            )
        expected = cp_id + 1
    return problems


def _signed_properly(
    cp: Mapping[str, Any], keys: AuditKeys, audit_key_id: str | None, label: str
) -> str | None:
    """What is wrong with a checkpoint's key, body or signature; None if nothing."""
    seq = int(cp["seq"])
    if audit_key_id and cp["key_id"] != audit_key_id:
        return f"{label} is signed by key {cp['key_id']}, not the pinned audit key"
    key = keys.get(cp["key_id"])
    if key is None:
        return f"{label} is signed by key {cp['key_id']}, which is not a registered audit key"
    try:
        body = json.loads(cp["body"])
        body_ok = body == {
            "_type": CHECKPOINT_TYPE,
            "hash": cp["hash"],
            "seq": seq,
            "time": body["time"],
        }
        signature = bytes.fromhex(cp["signature"])
    except (ValueError, KeyError, TypeError):
        return f"{label}: bad signature, or its fields were edited"
    if not (body_ok and key.verify(cp["body"].encode(), signature)):
        return f"{label}: bad signature, or its fields were edited"
    return None


def verify_tail(
    entries: list[dict[str, Any]], last_checkpoint_seq: int, settings: CheckpointSettings
) -> list[Problem]:
    """The chain may run past its last checkpoint only as far as the cadence allows.

    The daemon checkpoints every N entries or T seconds and at a clean stop; deleting the
    last checkpoints (to rewrite the chain after them) leaves a longer uncovered tail."""
    tail = [r for r in entries if r["seq"] > last_checkpoint_seq]
    if not tail:
        return []
    max_entries, max_seconds = settings.allowed_tail()
    span = float(tail[-1]["time"]) - float(tail[0]["time"])
    first, last = tail[0]["seq"], tail[-1]["seq"]
    if len(tail) <= max_entries and span <= max_seconds:
        return []
    where = (
        f"the last checkpoint covers entry {last_checkpoint_seq}"
        if last_checkpoint_seq
        else ("there is no checkpoint")
    )
    return [
        Problem(
            "uncovered",
            first,
            f"entries {first}-{last} ({len(tail)} entries over {span:.0f} s) are covered by no "
            f"checkpoint, more than the cadence allows (every {settings.every_entries} entries "
            f"or {settings.every_seconds:g} s): checkpoints were deleted ({where}), or entries "
            "appended",
        )
    ]


def verify_anchors(
    anchor_file: Path,
    conn: sqlite3.Connection,
    entries_by_seq: dict[int, dict[str, Any]],
    tip_seq: int,
    keys: AuditKeys,
    audit_key_id: str | None = None,
) -> tuple[int, list[Problem]]:
    """Every anchored checkpoint is in the database, unchanged, and the chain reaches it."""
    problems: list[Problem] = []
    stored = {
        int(r["id"]): dict(r)
        for r in conn.execute(
            "SELECT id, seq, hash, key_id, body, signature FROM audit_checkpoints"
        )
    }
    anchored: list[AnchoredCheckpoint] = []
    for number, item in read_anchor_file(anchor_file):
        if isinstance(item, str):
            problems.append(Problem("anchor", 0, f"anchor file line {number}: {item}"))
            continue
        label = f"anchored checkpoint {item.id} (entry {item.seq})"
        trouble = _signed_properly(asdict(item), keys, audit_key_id, label)
        if trouble:
            problems.append(Problem("anchor", item.seq, trouble))
            continue
        if item not in anchored:  # a line written twice (an anchor retried)
            anchored.append(item)
    for item in sorted(anchored, key=lambda a: (a.id, a.seq)):
        label = f"anchored checkpoint {item.id} (entry {item.seq})"
        row = stored.get(item.id)
        if row is None:
            problems.append(Problem("anchor", item.seq, f"{label} was deleted from the database"))
        elif any(row[name] != value for name, value in asdict(item).items()):
            problems.append(
                Problem(
                    "anchor", item.seq, f"{label} differs from checkpoint {item.id} in the database"
                )
            )
        entry = entries_by_seq.get(item.seq)
        if entry is not None and entry["hash"] != item.hash:
            problems.append(
                Problem(
                    "edited",
                    item.seq,
                    f"entries up to {item.seq} were rewritten: "
                    f"entry {item.seq} no longer has the hash {label} signed",
                )
            )
    if anchored:
        last = max(a.seq for a in anchored)
        if tip_seq < last:
            problems.append(
                Problem(
                    "truncated",
                    tip_seq + 1,
                    f"the chain was truncated: it ends at entry {tip_seq}, "
                    f"but the anchors cover entry {last}",
                )
            )
    return len(anchored), problems


def registered_audit_keys(keys_db: Path | None) -> dict[str, CheckpointVerifier]:
    """Every key registered with role ``audit`` whose id matches its key (read-only)."""
    if keys_db is None or not keys_db.exists():
        return {}
    conn = open_readonly(keys_db)
    try:
        found: dict[str, CheckpointVerifier] = {}
        for row in conn.execute(
            "SELECT key_id, tuf_key_json FROM keys WHERE role = ?", (AUDIT_ROLE,)
        ):
            if hashlib.sha256(row["tuf_key_json"].encode()).hexdigest() == row["key_id"]:
                found[row["key_id"]] = PublicAuditKey(
                    key_from_json(row["key_id"], row["tuf_key_json"])
                )
        return found
    except sqlite3.Error as exc:
        raise damaged(keys_db, exc) from exc
    finally:
        conn.close()


def verify(
    audit_db: Path,
    keys: Path | AuditKeys | None = None,
    audit_key_id: str | None = None,
    settings: CheckpointSettings | None = None,
    anchor_file: Path | None = None,
) -> Report:
    """Check the chain, its checkpoints, their cadence and (if given) the anchors.

    ``keys``: the audit keys that may sign checkpoints, or the key registry (keys.db) to
    read them from. ``settings``: the daemon's cadence (the defaults if not given).
    Raises StorageUnavailable (one line) when a database cannot be read at all.
    """
    verifiers = keys if isinstance(keys, Mapping) else registered_audit_keys(keys)
    settings = settings or CheckpointSettings()
    conn = open_readonly(audit_db)
    try:
        conn.execute("BEGIN")  # one consistent snapshot of entries and checkpoints
        entries = list(rows(conn))
        by_seq = {r["seq"]: r for r in entries}
        report = Report(entries=len(entries), tip_seq=entries[-1]["seq"] if entries else 0)
        report.problems = verify_chain(entries)
        count, last, problems = verify_checkpoints(conn, by_seq, verifiers, audit_key_id)
        problems += verify_tail(entries, last, settings)
        if anchor_file is not None:
            report.anchors, found = verify_anchors(
                anchor_file, conn, by_seq, report.tip_seq, verifiers, audit_key_id
            )
            problems += found
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        raise damaged(audit_db, exc) from exc
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
    except sqlite3.Error as exc:
        raise damaged(audit_db, exc) from exc
    finally:
        conn.close()
    return count
