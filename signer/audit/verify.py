"""Re-walk the audit chain and its signed checkpoints; say exactly what was tampered with.

Reads the state read-only (``signer.storage``: the SQLite files, or the shared
database), so it works with the daemon running or not.
Every row's hash is recomputed from its contents, its sequence number and the previous
row's hash. A row whose hash does not match is *edited*; a row whose hash matches only
under another sequence number was *moved*, which tells an insertion (later rows shifted
up), a deletion with renumbering (shifted down) and a reordering (rows swapped) apart; a
gap in the numbering is a *deletion*. Finally every checkpoint's signature is checked
with the audit key and its (seq, hash) against the row it covers, which catches a chain
rebuilt after an edit, and a truncated tail up to the last checkpoint. Checkpoint ids
must run 1, 2, 3... without a gap, and the chain may not run further past the last
checkpoint than the configured cadence allows (``AuditConfig.allowed_tail``): so
deleting checkpoints does not make the chain rewritable.

With an anchor file (``--anchor``, the checkpoints the daemon also wrote outside the
database), every anchored checkpoint must be in the database unchanged and the chain
must reach the last anchored entry: a truncated tail shows. An anchor file that does not
exist is a problem once the database holds a checkpoint (each was appended to it: deleting
the file must not turn the check off), and nothing before the first. Without one, entries after
the last checkpoint (within the cadence) can be removed or appended without trace, as
can anything if the attacker also controls the audit key's registry entry; pin the
audit key id (``--audit-key-id``) to guard against the latter.

The audit keys come from the key registry's table through the same reader (read-only),
so the audit package imports no key code.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from securesystemslib.signer import Key, Signature

from signer.algorithms import key_from_json
from signer.audit.anchor import AnchoredCheckpoint, read_anchor_file
from signer.audit.checkpoint import (
    CHECKPOINT_TYPE,
    AuditKeys,
    CheckpointVerifier,
)
from signer.audit.log import AUDIT_ROLE, GENESIS, entry_hash
from signer.config import AuditConfig
from signer.errors import StorageUnavailable
from signer.storage.interfaces import AuditReader
from signer.storage.sqlite.audit import SqliteAuditReader


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
    checkpoints: list[dict[str, Any]] | None,
    entries_by_seq: dict[int, dict[str, Any]],
    keys: AuditKeys,
    audit_key_id: str | None = None,
) -> tuple[int, int, list[Problem]]:
    """Check each checkpoint's signature and that the chain still holds what it signed."""
    problems: list[Problem] = []
    if checkpoints is None:  # a chain from before checkpoints
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
    entries: list[dict[str, Any]], last_checkpoint_seq: int, settings: AuditConfig
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
            f"checkpoint, more than the cadence allows (every {settings.checkpoint_entries} "
            f"entries or {settings.checkpoint_seconds:g} s): checkpoints were deleted ({where}), "
            "or entries appended",
        )
    ]


def verify_anchors(
    anchor_file: Path,
    checkpoints: list[dict[str, Any]],
    entries_by_seq: dict[int, dict[str, Any]],
    tip_seq: int,
    keys: AuditKeys,
    audit_key_id: str | None = None,
) -> tuple[int, list[Problem]]:
    """Every anchored checkpoint is in the database, unchanged, and the chain reaches it."""
    problems: list[Problem] = []
    stored = {int(r["id"]): r for r in checkpoints}
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


def registered_audit_keys(
    source: Path | AuditReader | None,
) -> dict[str, CheckpointVerifier]:
    """Every key registered with role ``audit`` whose id matches its key (read-only).

    ``source``: the key registry (SQLite keys.db), or a reader of the shared state."""
    if source is None:
        return {}
    reader = SqliteAuditReader(source, source) if isinstance(source, Path) else source
    found: dict[str, CheckpointVerifier] = {}
    for key_id, tuf_key_json in reader.audit_keys(AUDIT_ROLE):
        if hashlib.sha256(tuf_key_json.encode()).hexdigest() == key_id:
            found[key_id] = PublicAuditKey(key_from_json(key_id, tuf_key_json))
    return found


def verify(
    audit_db: Path | AuditReader,
    keys: Path | AuditKeys | None = None,
    audit_key_id: str | None = None,
    settings: AuditConfig | None = None,
    anchor_file: Path | None = None,
) -> Report:
    """Check the chain, its checkpoints, their cadence and (if given) the anchors.

    ``anchor_file``: where the daemon appended its checkpoints; missing, it is an
    ``anchor`` problem if the database holds a checkpoint (none is fine: the first
    checkpoint creates it).

    ``audit_db``: the SQLite audit.db, or a reader of the shared state. ``keys``: the
    audit keys that may sign checkpoints, or the key registry (keys.db) to read them from
    (a reader's own registry if not given). ``settings``: the daemon's cadence (the
    defaults if not given). Raises StorageUnavailable (one line) when the chain cannot be
    read at all.
    """
    reader = SqliteAuditReader(audit_db) if isinstance(audit_db, Path) else audit_db
    if isinstance(keys, Mapping):
        verifiers: AuditKeys = keys
    else:
        verifiers = registered_audit_keys(keys if keys is not None else _own_keys(audit_db))
    settings = settings or AuditConfig()
    entries, checkpoints = reader.snapshot()
    by_seq = {r["seq"]: r for r in entries}
    report = Report(entries=len(entries), tip_seq=entries[-1]["seq"] if entries else 0)
    report.problems = verify_chain(entries)
    count, last, problems = verify_checkpoints(checkpoints, by_seq, verifiers, audit_key_id)
    problems += verify_tail(entries, last, settings)
    if anchor_file is not None and not anchor_file.exists():
        if checkpoints:
            problems.append(Problem("anchor", 0, _missing_anchor(anchor_file, len(checkpoints))))
    elif anchor_file is not None:
        if checkpoints is None:
            raise StorageUnavailable(
                f"cannot read {reader.where}: no such table: audit_checkpoints (a damaged "
                "file, or not a signerd database)"
            )
        report.anchors, found = verify_anchors(
            anchor_file, checkpoints, by_seq, report.tip_seq, verifiers, audit_key_id
        )
        problems += found
    report.checkpoints, report.last_checkpoint_seq = count, last
    seen = {(p.kind, p.seq) for p in report.problems}
    report.problems += [p for p in problems if (p.kind, p.seq) not in seen]
    return report


def _missing_anchor(anchor_file: Path, checkpoints: int) -> str:
    return (
        f"the anchor file {anchor_file} is missing, but the database holds {checkpoints} "
        "checkpoint(s), each appended to it when signed (deleted or moved? check [audit] "
        "anchor_file, or give a copy with --anchor)"
    )


def _own_keys(audit_db: Path | AuditReader) -> AuditReader | None:
    return None if isinstance(audit_db, Path) else audit_db


def export(audit_db: Path | AuditReader, out: Any, since: int = 0) -> int:
    """Write entries as JSON lines (one object per entry, in order); returns the count."""
    reader = SqliteAuditReader(audit_db) if isinstance(audit_db, Path) else audit_db
    count = 0
    for row in reader.entries(since):
        out.write(json.dumps(row, sort_keys=True) + "\n")
        count += 1
    return count
