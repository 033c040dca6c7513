"""The audit log: every request, hash-chained, fail-closed, checkpointed, verifiable."""

from __future__ import annotations

import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from authz_helpers import audit_rows, sha256, tuf_payload, verify, wait_for

from harness import Daemon, create_token, free_port, running_daemon
from signer.audit.log import GENESIS, entry_hash
from signer.audit.verify import export
from signer.audit.verify import verify as verify_log
from signer.cli import main as signerd
from signer.config import AuditConfig
from signer_client import ClientError

CHECKPOINTS = "[audit]\ncheckpoint_entries = 10\ncheckpoint_seconds = 0.3\n"
SETTINGS = AuditConfig(10, 0.3)  # the daemon's cadence, as verify must know it


def _anchored_config(root: Path) -> str:
    """CHECKPOINTS plus both anchors: a file and a command (appending stdin to a file)."""
    command = ["sh", "-c", f"cat >> {root / 'anchors-by-command.jsonl'}"]
    return (
        CHECKPOINTS
        + f"anchor_file = {json.dumps(str(root / 'anchors.jsonl'))}\n"
        + f"anchor_command = {json.dumps(command)}\n"
    )


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("audit")
    config = _anchored_config(root)
    with running_daemon(root, clients=["admin", "alice"], extra_config=config) as d:
        yield d


def _anchors(served: Daemon) -> Path:
    return served.root / "anchors.jsonl"


@pytest.fixture(scope="module")
def key(served: Daemon) -> Any:
    with served.client("admin") as admin:
        key = admin.create_key("audited", role="targets")
    with served.client("alice") as alice:
        for version in range(1, 31):
            alice.sign(key.key_id, tuf_payload("targets", version))
            if version == 15:  # two rounds: at least two checkpoints
                wait_for(lambda: _checkpoint_seqs(served.state)[-1:] >= [12])
        with pytest.raises(ClientError):
            alice.sign("no-such-key", b"x")
    wait_for(lambda: _checkpoint_seqs(served.state)[-1:] >= [32])
    return key


def _checkpoint_seqs(state: Path) -> list[int]:
    conn = sqlite3.connect(f"file:{state / 'audit.db'}?mode=ro", uri=True)
    try:
        return [r[0] for r in conn.execute("SELECT seq FROM audit_checkpoints ORDER BY seq")]
    finally:
        conn.close()


def _copy_state(served: Daemon, dest: Path) -> Path:
    """A consistent copy of the live databases (SQLite's online backup)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("audit.db", "keys.db"):
        src = sqlite3.connect(served.state / name)
        dst = sqlite3.connect(dest / name)
        src.backup(dst)
        src.close()
        dst.close()
    return dest


def test_every_request_is_recorded_with_a_hash_not_the_payload(served: Daemon, key: Any) -> None:
    rows = audit_rows(served.state)
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
    prev = GENESIS
    for row in rows:
        assert row["prev_hash"] == prev
        prev = row["hash"]
    signs = [r for r in rows if r["operation"] == "sign" and r["principal"] == "alice"]
    allowed = [r for r in signs if r["outcome"] == "allowed"]
    assert len(allowed) == 30 == len({r["payload_sha256"] for r in allowed})
    assert {(r["key_id"], r["role"]) for r in allowed} == {(key.key_id, "targets")}
    refused = signs[-1]
    assert (refused["outcome"], refused["code"], refused["key_id"]) == (
        "failed",
        "NOT_FOUND",
        "no-such-key",
    )
    assert refused["payload_sha256"] == sha256(b"x")
    raw = (served.state / "audit.db").read_bytes()
    assert b'"_type":"targets"' not in raw and b"spec_version" not in raw


def test_checkpoints_are_signed_by_an_audit_key_in_the_token(served: Daemon, key: Any) -> None:
    with served.client("admin") as admin:
        (audit_key,) = admin.list_keys(role="audit")
        assert audit_key.label == "signerd-audit" and audit_key.scheme == "ecdsa-sha2-nistp256"
        with pytest.raises(ClientError) as info:  # it signs checkpoints only
            admin.sign(audit_key.key_id, tuf_payload("targets"))
        assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert "audit key" in info.value.message
        with pytest.raises(ClientError) as info:
            admin.create_key("mine", role="audit")
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    conn = sqlite3.connect(f"file:{served.state / 'audit.db'}?mode=ro", uri=True)
    body, signature, key_id = conn.execute(
        "SELECT body, signature, key_id FROM audit_checkpoints ORDER BY seq DESC LIMIT 1"
    ).fetchone()
    conn.close()
    assert key_id == audit_key.key_id
    verify(audit_key, body.encode(), bytes.fromhex(signature))
    assert json.loads(body)["_type"] == "signerd-audit-checkpoint"
    report = verify_log(served.state / "audit.db", served.state / "keys.db")
    assert report.ok, report.problems
    assert report.checkpoints >= 2 and report.last_checkpoint_seq >= 30


def test_a_quiet_log_is_checkpointed_after_checkpoint_seconds(served: Daemon, key: Any) -> None:
    """One more entry (far fewer than checkpoint_entries) is covered within the period."""
    with served.client("alice") as alice:
        alice.get_key(key.key_id)
    tip = audit_rows(served.state)[-1]["seq"]
    wait_for(lambda: _checkpoint_seqs(served.state)[-1:] >= [tip], timeout=5)


# -- tampering, on a copy of the state --------------------------------------------------------


def _edit(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE audit SET principal = 'mallory' WHERE seq = 5")


def _delete(conn: sqlite3.Connection) -> None:
    conn.execute("DELETE FROM audit WHERE seq = 5")


def _body(row: sqlite3.Row) -> dict[str, Any]:
    return {k: row[k] for k in row.keys() if k not in ("seq", "prev_hash", "hash")}  # noqa: SIM118


def _delete_renumbered(conn: sqlite3.Connection) -> None:
    """Entry 5 removed and the later ones renumbered to close the gap."""
    conn.execute("DELETE FROM audit WHERE seq = 5")
    conn.execute("UPDATE audit SET seq = -(seq - 1) WHERE seq > 5")
    conn.execute("UPDATE audit SET seq = -seq WHERE seq < 0")


def _insert(conn: sqlite3.Connection) -> None:
    """A forged entry at 5, correctly chained to 4; later entries renumbered to make room."""
    conn.execute("UPDATE audit SET seq = -(seq + 1) WHERE seq >= 5")
    conn.execute("UPDATE audit SET seq = -seq WHERE seq < 0")
    conn.row_factory = sqlite3.Row
    four = conn.execute("SELECT * FROM audit WHERE seq = 4").fetchone()
    forged = dict(_body(four), principal="mallory", detail="forged")
    digest = entry_hash(four["hash"], 5, forged)
    columns = [*forged, "seq", "prev_hash", "hash"]
    conn.execute(
        f"INSERT INTO audit ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
        [*forged.values(), 5, four["hash"], digest],
    )


def _reorder(conn: sqlite3.Connection) -> None:
    conn.row_factory = sqlite3.Row
    five, six = (conn.execute("SELECT * FROM audit WHERE seq = ?", (s,)).fetchone() for s in (5, 6))
    columns = [k for k in five.keys() if k != "seq"]  # noqa: SIM118
    for target, source in ((5, six), (6, five)):
        conn.execute(
            f"UPDATE audit SET {', '.join(f'{c} = ?' for c in columns)} WHERE seq = ?",
            [source[c] for c in columns] + [target],
        )


def _rehash_after(conn: sqlite3.Connection, seq: int) -> None:
    """Re-link every entry after ``seq`` onto it, as a forger covering tracks would."""
    conn.row_factory = sqlite3.Row
    prev = conn.execute("SELECT hash FROM audit WHERE seq = ?", (seq,)).fetchone()[0]
    for row in conn.execute("SELECT * FROM audit WHERE seq > ? ORDER BY seq", (seq,)).fetchall():
        digest = entry_hash(prev, row["seq"], _body(row))
        conn.execute(
            "UPDATE audit SET prev_hash = ?, hash = ? WHERE seq = ?", (prev, digest, row["seq"])
        )
        prev = digest


def _rebuild(conn: sqlite3.Connection) -> None:
    """Edit entry 5 and re-hash the whole chain after it: only a checkpoint can tell."""
    _edit(conn)
    _rehash_after(conn, 4)


def _delete_relinked(conn: sqlite3.Connection) -> None:
    """Entry 5 removed and every later entry re-hashed onto 4: the numbering still tells."""
    conn.execute("DELETE FROM audit WHERE seq = 5")
    _rehash_after(conn, 4)


def _truncate(conn: sqlite3.Connection) -> None:
    first = conn.execute("SELECT MIN(seq) FROM audit_checkpoints WHERE seq > 12").fetchone()[0]
    conn.execute("DELETE FROM audit WHERE seq >= ?", (first,))


def _drop_checkpoints_and_rebuild(conn: sqlite3.Connection) -> None:
    """Every checkpoint deleted, then entry 5 edited and the chain re-hashed after it."""
    conn.execute("DELETE FROM audit_checkpoints")
    _rebuild(conn)


def _drop_middle_checkpoint(conn: sqlite3.Connection) -> None:
    conn.execute("DELETE FROM audit_checkpoints WHERE id = 2")


def _forge_checkpoint(conn: sqlite3.Connection) -> None:
    conn.execute(
        "UPDATE audit_checkpoints SET hash = ? WHERE seq = (SELECT MIN(seq) FROM audit_checkpoints)",
        ("0" * 64,),
    )


@pytest.mark.parametrize(
    ("tamper", "kind", "seq", "says"),
    [
        (_edit, "edited", 5, "entry 5 was edited: its contents do not match its hash"),
        (_delete, "deleted", 5, "entry 5 deleted: the chain jumps from entry 4 to entry 6"),
        (_delete_renumbered, "deleted", 5, "entry 5 (or several from there) was deleted"),
        (
            _delete_relinked,
            "deleted",
            5,
            "entry 5 deleted: the chain jumps from entry 4 to entry 6",
        ),
        (_insert, "inserted", 5, "entry 5 was inserted: entry 6 was written as entry 5"),
        (_reorder, "reordered", 5, "entries 5, 6 were reordered"),
        (_rebuild, "edited", None, "were rewritten"),
        (_truncate, "deleted", None, "was deleted: checkpoint"),
        (_forge_checkpoint, "checkpoint", None, "bad signature, or its fields were edited"),
        (_drop_checkpoints_and_rebuild, "uncovered", 1, "are covered by no checkpoint"),
        (_drop_middle_checkpoint, "checkpoint", None, "checkpoint 2 deleted: the checkpoint ids"),
    ],
)
def test_verify_names_the_tampering(
    served: Daemon,
    key: Any,
    tmp_path: Path,
    tamper: Callable[[sqlite3.Connection], None],
    kind: str,
    seq: int | None,
    says: str,
) -> None:
    state = _copy_state(served, tmp_path)
    assert verify_log(state / "audit.db", state / "keys.db", settings=SETTINGS).ok
    conn = sqlite3.connect(state / "audit.db", isolation_level=None)
    tamper(conn)
    conn.close()
    report = verify_log(state / "audit.db", state / "keys.db", settings=SETTINGS)
    assert not report.ok
    matching = [p for p in report.problems if p.kind == kind and says in p.message]
    assert matching, [str(p) for p in report.problems]
    if seq is not None:
        assert matching[0].seq == seq


def test_cli_verify_and_export(
    served: Daemon, key: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert signerd(["audit", "verify", "--config", str(served.config_path)]) == 0
    assert capsys.readouterr().out.startswith("OK: ")
    out = tmp_path / "audit.jsonl"
    assert signerd(["audit", "export", "--config", str(served.config_path), "--out", str(out)]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    rows = audit_rows(served.state)
    assert lines[: len(rows)] == rows[: len(lines)] and len(lines) >= 32
    assert set(lines[0]) == {
        "seq", "time", "principal", "operation", "key_id", "role", "repository",
        "payload_sha256", "outcome", "code", "detail", "request_id", "replica", "prev_hash",
        "hash",
    }  # fmt: skip
    assert lines[0]["replica"] == ""  # one host without [state] replica: nobody to name
    buffer = io.StringIO()
    assert export(served.state / "audit.db", buffer, since=30) == len(audit_rows(served.state)) - 30
    state = _copy_state(served, tmp_path / "copy")
    conn = sqlite3.connect(state / "audit.db", isolation_level=None)
    _edit(conn)
    conn.close()
    capsys.readouterr()
    assert signerd(["audit", "verify", "--state-dir", str(state)]) == 1
    printed = capsys.readouterr().out
    assert "edited: entry 5 was edited" in printed and "FAILED: 1 problem(s)" in printed


def test_no_signature_without_its_audit_entry(served: Daemon, key: Any) -> None:
    """Fail closed: when the entry cannot be written, the caller gets no signature."""
    before = len(audit_rows(served.state))
    blocker = sqlite3.connect(served.state / "audit.db", isolation_level=None)
    blocker.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'disk full'); END"
    )
    payload = tuf_payload("targets", 100)
    try:
        with served.client("alice") as alice, pytest.raises(ClientError) as info:
            alice.sign(key.key_id, payload)
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
        assert "audit log could not be written" in info.value.message
        assert "nothing was signed" in info.value.message
    finally:
        blocker.execute("DROP TRIGGER refuse")
        blocker.close()
    assert len(audit_rows(served.state)) == before
    with served.client("alice") as alice:  # the same bytes, once the log is back
        verify(key, payload, alice.sign(key.key_id, payload).signature)
    assert audit_rows(served.state, "payload_sha256 = ?", (sha256(payload),))[0]["outcome"] == (
        "allowed"
    )
    assert verify_log(served.state / "audit.db", served.state / "keys.db").ok


def test_sigkill_under_load_loses_no_entry_for_a_returned_signature(tmp_path: Path) -> None:
    received: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    with running_daemon(tmp_path, clients=["admin"]) as daemon:
        with daemon.client("admin") as admin:
            key_id = admin.create_key("load", role="targets").key_id

        def load(worker: int) -> None:
            with daemon.client("admin") as client:
                i = 0
                while not stop.is_set():
                    i += 1
                    payloads = [f"{worker}-{i}-{j}-{uuid.uuid4()}".encode() for j in range(4)]
                    try:
                        if i % 3:
                            client.sign(key_id, payloads[0])
                            got = [payloads[0]]
                        else:
                            results = client.sign_batch(key_id, payloads)
                            got = [p for p, r in zip(payloads, results, strict=True) if r.ok]
                    except ClientError:
                        return  # the daemon is gone
                    with lock:
                        received.extend(sha256(p) for p in got)

        threads = [threading.Thread(target=load, args=(w,)) for w in range(6)]
        for t in threads:
            t.start()
        wait_for(lambda: len(received) > 300, timeout=30, interval=0.01)
        daemon.kill()  # SIGKILL, mid-load
        stop.set()
        for t in threads:
            t.join(timeout=20)
        with lock:
            returned = set(received)
    logged = {
        r["payload_sha256"]
        for r in audit_rows(
            daemon.state, "operation IN ('sign', 'sign-raw') AND outcome = 'allowed'"
        )
    }
    assert len(returned) > 300
    missing = returned - logged
    assert not missing, f"{len(missing)} signatures were returned without an audit entry"
    assert verify_log(daemon.state / "audit.db", daemon.state / "keys.db").ok


# -- anchors: checkpoints kept outside the database ---------------------------------------------


def _anchor_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_checkpoint_is_anchored_in_the_file_and_by_the_command(
    served: Daemon, key: Any
) -> None:
    conn = sqlite3.connect(f"file:{served.state / 'audit.db'}?mode=ro", uri=True)
    stored = {
        r[0]: list(r)
        for r in conn.execute(
            "SELECT id, seq, hash, key_id, body, signature FROM audit_checkpoints"
        )
    }
    conn.close()
    for path in (_anchors(served), served.root / "anchors-by-command.jsonl"):
        lines = _anchor_lines(path)
        assert len(lines) >= 2
        for line in lines:
            assert [line[k] for k in ("id", "seq", "hash", "key_id", "body", "signature")] == (
                stored[line["id"]]
            )
    report = verify_log(
        served.state / "audit.db", served.state / "keys.db", None, SETTINGS, _anchors(served)
    )
    assert report.ok, [str(p) for p in report.problems]
    assert report.anchors >= 2


def _truncate_consistently(conn: sqlite3.Connection) -> None:
    """The tail cut at an early checkpoint, later checkpoints with it: the database alone
    is consistent (only the anchors know there was more)."""
    keep = conn.execute("SELECT seq FROM audit_checkpoints ORDER BY id LIMIT 1 OFFSET 1").fetchone()
    conn.execute("DELETE FROM audit WHERE seq > ?", keep)
    conn.execute("DELETE FROM audit_checkpoints WHERE seq > ?", keep)


def _forge_tail(conn: sqlite3.Connection) -> None:
    """The last checkpoint deleted, the entries after the one before it edited, re-hashed."""
    (last,) = conn.execute("SELECT MAX(id) FROM audit_checkpoints").fetchone()
    (before,) = conn.execute(
        "SELECT seq FROM audit_checkpoints WHERE id = ?", (last - 1,)
    ).fetchone()
    conn.execute("DELETE FROM audit_checkpoints WHERE id = ?", (last,))
    conn.execute("UPDATE audit SET principal = 'mallory' WHERE seq = ?", (before + 1,))
    _rehash_after(conn, before)


@pytest.mark.parametrize(
    ("tamper", "kind", "says"),
    [
        (_truncate_consistently, "truncated", "the chain was truncated: it ends at entry"),
        (_truncate_consistently, "anchor", "was deleted from the database"),
        (_forge_tail, "anchor", "was deleted from the database"),
        (_forge_tail, "edited", "no longer has the hash anchored checkpoint"),
    ],
)
def test_the_anchor_shows_what_the_database_alone_cannot(
    served: Daemon,
    key: Any,
    tmp_path: Path,
    tamper: Callable[[sqlite3.Connection], None],
    kind: str,
    says: str,
) -> None:
    state = _copy_state(served, tmp_path)
    anchors = tmp_path / "anchors.jsonl"
    shutil.copy(_anchors(served), anchors)
    conn = sqlite3.connect(state / "audit.db", isolation_level=None)
    tamper(conn)
    conn.close()
    alone = verify_log(state / "audit.db", state / "keys.db", settings=SETTINGS)
    assert alone.ok, [str(p) for p in alone.problems]  # within the cadence: undetectable
    report = verify_log(state / "audit.db", state / "keys.db", None, SETTINGS, anchors)
    assert not report.ok
    assert [p for p in report.problems if p.kind == kind and says in p.message], [
        str(p) for p in report.problems
    ]


def test_a_forged_anchor_line_is_refused(served: Daemon, key: Any, tmp_path: Path) -> None:
    state = _copy_state(served, tmp_path)
    lines = _anchor_lines(_anchors(served))
    lines[0]["seq"] += 1000  # claims the chain was longer: its signature says otherwise
    anchors = tmp_path / "anchors.jsonl"
    anchors.write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"id": 9')
    report = verify_log(state / "audit.db", state / "keys.db", None, SETTINGS, anchors)
    messages = [str(p) for p in report.problems]
    assert any("bad signature, or its fields were edited" in m for m in messages), messages
    assert any("incomplete last line" in m for m in messages), messages
    assert not any(p.kind == "truncated" for p in report.problems)


def test_cli_verify_with_the_anchor(
    served: Daemon, key: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # --config: the configured cadence and anchor file.
    assert signerd(["audit", "verify", "--config", str(served.config_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK: ") and "anchored checkpoint(s) found in the database" in out
    state = _copy_state(served, tmp_path / "copy")
    conn = sqlite3.connect(state / "audit.db", isolation_level=None)
    _truncate_consistently(conn)
    conn.close()
    cadence = ["--checkpoint-entries", "10", "--checkpoint-seconds", "0.3"]
    assert signerd(["audit", "verify", "--state-dir", str(state), *cadence]) == 0
    capsys.readouterr()
    anchor = ["--anchor", str(_anchors(served))]
    assert signerd(["audit", "verify", "--state-dir", str(state), *cadence, *anchor]) == 1
    out = capsys.readouterr().out
    assert "truncated: the chain was truncated" in out and "FAILED" in out
    # Every checkpoint gone and the chain rebuilt: the cadence tells, from the CLI too.
    conn = sqlite3.connect(state / "audit.db", isolation_level=None)
    _drop_checkpoints_and_rebuild(conn)
    conn.close()
    tight = ["--checkpoint-entries", "3", "--checkpoint-seconds", "0.3"]  # tail of 6 at most
    assert signerd(["audit", "verify", "--state-dir", str(state), *tight]) == 1
    assert "uncovered: entries 1-" in capsys.readouterr().out


# The least a config file needs to load: its state in ``state`` next to it.
MINIMAL_CONFIG = (
    '[tls]\nca = "ca"\ncert = "c"\nkey = "k"\n[token]\nlabel = "t"\n[state]\ndir = "state"\n'
)


def _verify_config(root: Path, anchor_file: Path) -> Path:
    """A config for ``audit verify --config``: state in ``root/state``, the anchor file."""
    path = root / "verify.toml"
    path.write_text(
        MINIMAL_CONFIG + CHECKPOINTS + f"anchor_file = {json.dumps(str(anchor_file))}\n"
    )
    return path


def test_cli_verify_fails_when_the_configured_anchor_file_is_missing(
    served: Daemon, key: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Deleting the anchor file must not turn the anchor check off: with checkpoints in
    the database, a configured anchor file that is not there fails, in one line."""
    anchors = tmp_path / "anchors.jsonl"
    config = _verify_config(tmp_path, anchors)
    shutil.copy(_anchors(served), tmp_path / "kept.jsonl")  # before the state: a subset
    _copy_state(served, tmp_path / "state")
    capsys.readouterr()
    assert signerd(["audit", "verify", "--config", str(config)]) == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    missing = [line for line in lines if "anchor file" in line]
    assert missing == [
        f"anchor: the anchor file {anchors} is missing, but the database holds "
        f"{len(_checkpoint_seqs(tmp_path / 'state'))} checkpoint(s), each appended to it "
        "when signed (deleted or moved? check [audit] anchor_file, or give a copy with "
        "--anchor)"
    ], captured.out
    assert lines[-1].startswith("FAILED: 1 problem(s)") and "Traceback" not in captured.err
    (tmp_path / "kept.jsonl").rename(anchors)  # the same config with its file: OK
    assert signerd(["audit", "verify", "--config", str(config)]) == 0
    assert "anchored checkpoint(s) found in the database" in capsys.readouterr().out


def test_cli_verify_without_a_checkpoint_yet_needs_no_anchor_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before the first checkpoint the daemon has not created its anchor file: no fault."""
    from signer.audit.log import AuditEvent, AuditLog, Outcome

    audit = AuditLog(tmp_path / "state" / "audit.db")
    try:
        audit.record(AuditEvent("alice", "sign", Outcome.ALLOWED))
    finally:
        audit.close()
    anchors = tmp_path / "anchors.jsonl"
    assert signerd(["audit", "verify", "--config", str(_verify_config(tmp_path, anchors))]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("OK: 1 entries, chain intact, 0 signed checkpoint(s)")
    assert captured.err == f"note: no anchor file {anchors} yet (no checkpoint signed yet)\n"


# -- damaged databases: one line, non-zero, never a traceback ----------------------------------


def _random_bytes(path: Path) -> None:
    path.write_bytes(os.urandom(64 * 1024))


def _cut_in_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _not_a_database(path: Path) -> None:
    path.write_text("this is not a database\n" * 100)


@pytest.mark.parametrize("damage", [_random_bytes, _cut_in_half, _not_a_database])
@pytest.mark.parametrize("command", ["verify", "export"])
def test_a_damaged_database_is_one_line_and_a_non_zero_exit(
    served: Daemon,
    key: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    damage: Callable[[Path], None],
    command: str,
) -> None:
    state = _copy_state(served, tmp_path)
    conn = sqlite3.connect(state / "audit.db")
    for _ in range(20):  # enough entries that half a file misses some of them
        conn.execute(
            "INSERT INTO audit (time, principal, operation, key_id, role, repository, "
            "payload_sha256, outcome, code, detail, request_id, prev_hash, hash) "
            "SELECT time, principal, operation, key_id, role, repository, payload_sha256, "
            "outcome, code, detail || zeroblob(2000), request_id, prev_hash, hash "
            "FROM audit WHERE seq = 1"
        )
    conn.commit()
    conn.close()
    damage(state / "audit.db")
    capsys.readouterr()
    out = ["--out", str(tmp_path / "out.jsonl")] if command == "export" else []
    assert signerd(["audit", command, "--state-dir", str(state), *out]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"signerd: cannot read {state / 'audit.db'}: "), err
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("workers", [1, 2])
def test_the_daemon_refuses_to_start_on_a_damaged_audit_log(tmp_path: Path, workers: int) -> None:
    env = create_token(tmp_path / "hsm")
    daemon = Daemon(root=tmp_path, port=free_port(), env=env, workers=workers)
    daemon.state.mkdir(parents=True)
    (daemon.state / "audit.db").write_bytes(os.urandom(8192))
    daemon.start(wait=False)
    assert daemon.proc is not None
    code = daemon.proc.wait(timeout=30)
    log = daemon.log()
    assert code != 0
    assert "cannot open the audit log" in log and "damaged file, or not a database" in log, log
    assert "Traceback" not in log


def test_the_audit_package_is_a_leaf() -> None:
    """signer.audit knows no key code: the checkpoint signer is injected."""
    script = (
        "import sys, signer.audit, signer.audit.checkpoint, signer.audit.verify, "
        "signer.audit.anchor, signer.audit.cli\n"
        "bad = ('signer.token', 'signer.registry', 'signer.keys', 'signer.pipeline', "
        "'signer.policy', 'signer.audit_key')\n"
        "print([m for m in sys.modules if m.startswith(bad)])"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout


# -- durability and group commit -----------------------------------------------------------


def test_commits_are_fsynced_and_concurrent_callers_share_them(tmp_path: Path) -> None:
    """synchronous=FULL (survives a power loss); 16 callers at once share commits."""
    from signer.audit.log import AuditEvent, AuditLog, Outcome

    audit = AuditLog(tmp_path / "audit.db")
    try:
        assert audit.chain._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        start = threading.Barrier(16)

        def caller(n: int) -> None:
            start.wait()
            for i in range(25):
                audit.record(AuditEvent(f"caller-{n}", "sign", Outcome.ALLOWED, detail=str(i)))

        threads = [threading.Thread(target=caller, args=(n,)) for n in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert audit.committed_entries == 400
        assert audit.committed_entries / audit.commits >= 2, (audit.commits, "commits")
    finally:
        audit.close()
    report = verify_log(tmp_path / "audit.db", {}, settings=AuditConfig(1000))
    assert report.ok and report.entries == 400


def test_the_daemons_own_chain_is_fsynced(tmp_path: Path) -> None:
    """The connections the daemon really writes with: its chain comes from the backend the
    config names (``open_state(config).audit()``, as signer.app does), not from an
    ``AuditLog`` given a setting; entries and checkpoints are both synchronous=FULL."""
    from signer.audit.log import AuditEvent, AuditLog, Outcome
    from signer.config import load_config, open_state

    config_path = tmp_path / "signer.toml"
    config_path.write_text(MINIMAL_CONFIG)
    config = load_config(config_path)
    state = open_state(config)
    audit = AuditLog(state.audit(), replica=config.state.replica_name)
    try:
        audit.record(AuditEvent("alice", "sign", Outcome.ALLOWED))
        chain: Any = audit.chain
        assert Path(chain.path) == tmp_path / "state" / "audit.db"
        assert chain._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        with chain._checkpoints() as side:  # the checkpointer's own connection
            assert side.execute("PRAGMA synchronous").fetchone()[0] == 2
    finally:
        audit.close()
        state.close()


def test_an_anchor_that_fails_never_blocks_signing(tmp_path: Path) -> None:
    config = CHECKPOINTS + 'anchor_command = ["sh", "-c", "echo anchor store down >&2; exit 3"]\n'
    with running_daemon(tmp_path, clients=["admin"], extra_config=config) as daemon:
        with daemon.client("admin") as admin:
            key = admin.create_key("unanchored", role="targets")
            for i in range(12):
                verify(key, b"%d" % i, admin.sign(key.key_id, b"%d" % i).signature)
        log = daemon.wait_log("not anchored yet, will retry")
        assert "exited 3: anchor store down" in log
        assert daemon.proc is not None and daemon.proc.poll() is None
        wait_for(lambda: _checkpoint_seqs(daemon.state)[-1:] >= [13])  # made all the same


@pytest.mark.parametrize("replica", ["", "replica-é"])
def test_the_writers_fast_encoding_hashes_as_the_verifier_does(
    tmp_path: Path, replica: str
) -> None:
    """The writer spells the hashed JSON out by hand; the verifier uses ``json``. Awkward
    values (escapes, control characters, non-ASCII, an int or huge time) must agree."""
    from signer.audit.log import AuditEvent, AuditLog, Outcome

    awkward = ["", "é", "\u2028", '"\\', "\x00\x1f", "𝄞", "a\nb", "plain"]
    times: list[float] = [1.5, 0.0, 1e-7, 1e22, 1700000000.123456]
    audit = AuditLog(tmp_path / "audit.db", replica=replica)
    try:
        for n, text in enumerate(awkward):
            audit.record(
                AuditEvent(
                    text,
                    "sign",
                    Outcome.ALLOWED,
                    text,
                    text,
                    text,
                    text,
                    text,
                    text,
                    text,
                    times[n % len(times)],
                ),
                AuditEvent("p", "sign", Outcome.DENIED, time=n),  # an int time: the encoder
            )
        # One commit whose entries share all but payload_sha256 and time (a SignBatch):
        # the shared fields are encoded once, each entry's own two every time.
        audit.record(
            *(
                AuditEvent("p", "sign-raw", Outcome.ALLOWED, "k", "r", "", text, time=1 + i / 7)
                for text in awkward
                for i in range(len(times))
            ),
            AuditEvent(
                "q", "sign-raw", Outcome.FAILED, "k", "r", "", "x", "INVALID_ARGUMENT", time=2
            ),
        )
    finally:
        audit.close()
    report = verify_log(tmp_path / "audit.db", {}, settings=AuditConfig(1000))
    assert report.ok, report
    assert report.entries == 2 * len(awkward) + len(awkward) * len(times) + 1


def test_the_writers_rows_follow_the_audit_columns() -> None:
    """``_row`` spells the column order out for speed: it must be AUDIT_COLUMNS'."""
    from signer.audit.log import _FIELDS, AuditEvent, _row
    from signer.storage.interfaces import AUDIT_COLUMNS

    probe = AuditEvent(**{name: name for name in _FIELDS if name != "time"}, time=7.5)
    row = _row(1, probe, "outcome", "replica", "prev_hash", "hash")
    named = {1: "seq", 7.5: "time"}
    assert tuple(named.get(value, value) for value in row) == AUDIT_COLUMNS
