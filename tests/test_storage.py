"""The storage contract, run against both backends: SQLite files and a real PostgreSQL."""

from __future__ import annotations

import itertools
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from signer.audit.log import AuditEvent, AuditLog, Outcome
from signer.audit.verify import verify
from signer.errors import AlreadyExists, StorageUnavailable
from signer.storage import Backend, open_backend
from signer.storage.interfaces import AUDIT_COLUMNS
from signer.storage.records import (
    KeyRecord,
    KeyState,
    NotaryKey,
    RequestState,
    SignatureRequest,
    VersionClaim,
)
from signer.storage.sqlite import Database, transaction
from signer.storage.sqlite.audit import SqliteAuditChain
from signer.storage.sqlite.buckets import SqliteBuckets
from signer.storage.sqlite.versions import SqliteVersions

_names = itertools.count()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        made = open_backend(tmp_path)
    else:
        cluster = request.getfixturevalue("pg_cluster")
        url = cluster.fresh_database(f"t{next(_names)}_{int(time.time() * 1000)}")
        made = open_backend(tmp_path, url, cluster.password)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def pg(pg_cluster, tmp_path: Path) -> Iterator[tuple[str, str]]:  # type: ignore[no-untyped-def]
    url = pg_cluster.fresh_database(f"r{next(_names)}_{int(time.time() * 1000)}")
    yield url, pg_cluster.password


def _key(n: int, role: str = "targets") -> KeyRecord:
    return KeyRecord(
        key_id=f"{n:064x}",
        object_id=f"obj{n}",
        algorithm_name="ecdsa-sha2-nistp256",
        label=f"k{n}",
        role=role,
        repository="repo",
        public_key_pem="PEM",
        tuf_key_json="{}",
        created_at=float(n),
    )


def test_keys(backend: Backend) -> None:
    keys = backend.keys()
    try:
        keys.add(_key(1))
        keys.add(_key(2, "root"))
        with pytest.raises(AlreadyExists):
            keys.add(_key(1))
        assert keys.get(_key(1).key_id) == _key(1)
        assert keys.get("nope") is None
        assert [k.key_id for k in keys.find(role="root")] == [_key(2).key_id]
        keys.set_state(_key(1).key_id, KeyState.RETIRED, 5.0, None)
        got = keys.get(_key(1).key_id)
        assert got is not None and got.state is KeyState.RETIRED and got.retired_at == 5.0
        keys.set_certificate(_key(2).key_id, "CERT")
        assert keys.get(_key(2).key_id).certificate_pem == "CERT"  # type: ignore[union-attr]
        assert [k.key_id for k in keys.find(state="active")] == [_key(2).key_id]
    finally:
        keys.close()


def test_keys_page_after_a_position_in_creation_order(backend: Backend) -> None:
    """ListKeys' paged query: (created_at, key_id) order, ties broken by key_id, every key
    once, a key created meanwhile lands on a later page, the filter still applies."""
    keys = backend.keys()
    try:
        made = [_key(n) for n in range(10, 17)]
        tie = replace(_key(18), created_at=12.0)  # the same created_at as key 12
        for record in [*made, tie, _key(19, "root")]:
            keys.add(record)
        order = sorted([*made, tie], key=lambda r: (r.created_at, r.key_id))
        seen: list[str] = []
        after: tuple[float, str] | None = None
        while True:
            page = keys.find(role="targets", after=after, limit=3)
            seen += [r.key_id for r in page]
            if len(page) < 3:
                break
            after = (page[-1].created_at, page[-1].key_id)
            if len(seen) == 3:
                keys.add(_key(20))  # created while listing: comes once, at the end
        assert seen == [r.key_id for r in order] + [_key(20).key_id]
        assert keys.find(role="targets", limit=2) == order[:2]
        assert keys.find(after=(16.0, _key(16).key_id)) == [_key(19, "root"), _key(20)]
    finally:
        keys.close()


def test_a_change_elsewhere_shows_in_changed(backend: Backend, tmp_path: Path) -> None:
    mine, theirs = backend.keys(), backend.keys()
    try:
        mine.changed()
        assert not mine.changed()
        theirs.add(_key(3))
        deadline = time.monotonic() + 1.0
        while not mine.changed():
            assert time.monotonic() < deadline, "a change elsewhere did not show within 1 s"
            time.sleep(0.01)
    finally:
        mine.close()
        theirs.close()


def test_versions(backend: Backend) -> None:
    versions = backend.versions()
    claim = VersionClaim("k", "targets", 2, "a" * 64, "2030-01-01T00:00:00Z", "alice")
    assert versions.claim(claim, 1.0) is None
    assert versions.claim(claim, 2.0) is None  # the same bytes again
    rollback = VersionClaim("k", "targets", 1, "b" * 64, "2030-01-01T00:00:00Z", "alice")
    assert versions.claim(rollback, 3.0) == (2, "a" * 64)
    fork = VersionClaim("k", "targets", 2, "c" * 64, "2030-01-01T00:00:00Z", "alice")
    assert versions.claim(fork, 3.0) == (2, "a" * 64)
    assert versions.last("k", "targets") == (2, "a" * 64)
    assert versions.last("k", "root") is None
    versions.close()


def test_claims_of_a_group_answer_each_as_one_claim_would(backend: Backend) -> None:
    """claim_many (one round trip on PostgreSQL): new rows, moves forward, re-signs,
    rollbacks and forks in one group, each answered as ``claim`` answers it; a group
    naming one (key, role) twice claims in order."""
    versions = backend.versions()

    def c(key: str, version: int, digest: str, role: str = "timestamp") -> VersionClaim:
        return VersionClaim(key, role, version, digest * 64, "2030-01-01T00:00:00Z", "ci")

    assert versions.claim_many([c("a", 3, "a"), c("b", 3, "b"), c("c", 3, "c")], 1.0) == [
        None,
        None,
        None,
    ]
    answers = versions.claim_many(
        [
            c("a", 4, "d"),  # forward
            c("b", 3, "b"),  # the same payload again: a re-sign
            c("c", 2, "e"),  # rollback
            c("new", 1, "f"),  # a new row
            c("c", 3, "x", role="snapshot"),  # another role of the same key: its own row
        ],
        2.0,
    )
    assert answers == [None, None, (3, "c" * 64), None, None]
    fork = versions.claim_many([c("a", 4, "z"), c("b", 9, "b")], 3.0)
    assert fork == [(4, "d" * 64), None]
    assert versions.last("a", "timestamp") == (4, "d" * 64)
    assert versions.last("b", "timestamp") == (9, "b" * 64)
    assert versions.last("c", "timestamp") == (3, "c" * 64)  # the rollback wrote nothing
    assert versions.last("new", "timestamp") == (1, "f" * 64)
    # One (key, role) twice in a group: claimed in order, the second one refused.
    twice = versions.claim_many([c("d", 5, "p"), c("d", 4, "q")], 4.0)
    assert twice == [None, (5, "p" * 64)]
    versions.close()


def test_concurrent_claims_of_one_version_sign_one_payload(backend: Backend) -> None:
    stores = [backend.versions() for _ in range(4)]
    won: list[str] = []

    def claim(i: int) -> None:
        digest = f"{i}" * 64
        c = VersionClaim("k", "snapshot", 7, digest, "2030-01-01T00:00:00Z", f"p{i}")
        if stores[i].claim(c, time.time()) is None:
            won.append(digest)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1


def test_quorum(backend: Backend) -> None:
    quorum = backend.quorum()
    request = SignatureRequest(
        "r1", "k", b"payload", "d" * 64, "alice", "why", 2, RequestState.PENDING, 1.0, 1e12
    )
    quorum.add(request)
    assert quorum.get("r1") == request
    assert quorum.get("nope") is None
    seen: list[SignatureRequest | None] = []
    after = quorum.approve("r1", "bob", 2.0, seen.append)
    assert after is not None and after.approvers == ("bob",) and after.state is RequestState.PENDING
    with pytest.raises(PermissionError):
        quorum.approve("r1", "carol", 3.0, _refuse)
    assert quorum.get("r1").approvers == ("bob",)  # type: ignore[union-attr]
    after = quorum.approve("r1", "carol", 3.0, lambda r: None)
    assert after is not None and after.state is RequestState.APPROVED
    assert quorum.claim("r1", 4.0)
    assert not quorum.claim("r1", 4.0)
    assert quorum.get("r1").state is RequestState.FULFILLED  # type: ignore[union-attr]


def test_counts_for_the_metrics(backend: Backend) -> None:
    """Keys by state; unexpired open quorum requests by state (signer.metrics)."""
    keys, quorum = backend.keys(), backend.quorum()
    assert keys.count_by_state() == {} and quorum.open_counts(10.0) == {}
    for n in range(1, 5):
        keys.add(_key(n))
    keys.set_state(_key(1).key_id, KeyState.RETIRED, 5.0, None)
    keys.set_state(_key(2).key_id, KeyState.DESTROYED, None, 6.0)
    assert keys.count_by_state() == {"active": 2, "retired": 1, "destroyed": 1}

    def request(rid: str, state: RequestState, expires: float) -> SignatureRequest:
        return SignatureRequest(rid, "k", b"p", "d" * 64, "alice", "", 2, state, 1.0, expires)

    quorum.add(request("open", RequestState.PENDING, 100.0))
    quorum.add(request("late", RequestState.PENDING, 5.0))  # expired by t=10
    quorum.add(request("ready", RequestState.APPROVED, 100.0))
    quorum.add(request("done", RequestState.FULFILLED, 100.0))
    assert quorum.open_counts(10.0) == {"pending": 1, "approved": 1}
    assert quorum.open_counts(1.0) == {"pending": 2, "approved": 1}


def _refuse(request: SignatureRequest | None) -> None:
    raise PermissionError("no")


def test_notary_keys(backend: Backend) -> None:
    notary = backend.notary()
    key = NotaryKey("n1", "k1", "ecdsa", b"\x00\x01", "targets", "docker.io/x")
    notary.add(key, 1.0)
    assert notary.get("n1") == key
    assert notary.get("n2") is None
    assert notary.all() == [key]


def test_buckets(backend: Backend) -> None:
    buckets = backend.buckets()
    assert buckets.take("p", 1.0, 3, 2) == 0.0
    assert buckets.take("p", 1.0, 3, 1) == 0.0
    assert buckets.take("p", 1.0, 3, 1) > 0.5
    buckets.close()


def test_audit_chain_verifies(backend: Backend) -> None:
    audit = AuditLog(backend.audit())
    try:
        for i in range(5):
            audit.record(AuditEvent("alice", "sign", Outcome.ALLOWED, key_id=f"k{i}"))
        assert audit.chain.tip() is not None and audit.chain.tip()[0] == 5  # type: ignore[index]
        assert audit.chain.add_checkpoint(5, audit.chain.tip()[1], 1.0, "a", "{}", "00") == 1  # type: ignore[index]
        assert audit.chain.add_checkpoint(5, "x", 1.0, "a", "{}", "00") is None
        assert audit.chain.last_checkpoint() == (5, 1.0)
        assert set(audit.chain.last_signatures()) == {f"k{i}" for i in range(5)}
    finally:
        audit.close()
    entries, _ = backend.audit_reader().snapshot()
    assert [e["seq"] for e in entries] == [1, 2, 3, 4, 5]
    report = verify(backend.audit_reader(), {})
    assert report.entries == 5
    assert "edited" not in report.kinds() and "deleted" not in report.kinds()


def test_appenders_in_turn_extend_one_chain(backend: Backend) -> None:
    """Two writers (workers or replicas) appending in turn: each append starts from a tip
    the other has moved (the one-statement append finds it stale and inserts nothing),
    so every append takes the locked path; the chain stays whole and verifies. One of them
    holds 1,100 entries (more than one statement's worth of rows on SQLite)."""
    logs = [AuditLog(backend.audit()), AuditLog(backend.audit())]  # two chains, one store
    sizes = [1100 if i == 5 else 1 + i % 3 for i in range(12)]
    try:
        for i, size in enumerate(sizes):
            log = logs[i % 2]
            events = [AuditEvent(f"w{i % 2}", "sign", Outcome.ALLOWED, key_id=f"k{i}")] * size
            log.record(*events)
        for _ in range(3):  # and again from the same writer: the fast path
            logs[0].record(AuditEvent("w0", "sign", Outcome.ALLOWED, key_id="again"))
    finally:
        for log in logs:
            log.close()
    entries, _ = backend.audit_reader().snapshot()
    assert [e["seq"] for e in entries] == list(range(1, 1 + sum(sizes) + 3))
    assert [e["key_id"] for e in entries].count("k5") == 1100
    assert not verify(backend.audit_reader(), {}).kinds() & {"edited", "deleted", "inserted"}


def test_replicas_append_one_chain(pg: tuple[str, str], tmp_path: Path) -> None:
    url, password = pg
    a, b = open_backend(tmp_path, url, password), open_backend(tmp_path, url, password)
    logs = [AuditLog(a.audit()), AuditLog(b.audit())]
    try:

        def hammer(log: AuditLog, who: str) -> None:
            for i in range(40):
                log.record(AuditEvent(who, "sign", Outcome.ALLOWED, key_id=f"{who}{i}"))

        threads = [
            threading.Thread(target=hammer, args=(log, f"r{n}{t}"))
            for n, log in enumerate(logs)
            for t in range(2)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for log in logs:
            log.close()
    entries, _ = a.audit_reader().snapshot()
    assert [e["seq"] for e in entries] == list(range(1, 161))
    assert not verify(a.audit_reader(), {}).kinds() & {"edited", "deleted", "inserted"}
    a.close()
    b.close()


def test_database_down_is_unavailable_then_recovers(
    pg_cluster,
    pg: tuple[str, str],
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    url, password = pg
    state = open_backend(tmp_path, url, password)
    versions = state.versions()
    try:
        claim = VersionClaim("k", "targets", 1, "a" * 64, "2030-01-01T00:00:00Z", "alice")
        assert versions.claim(claim, 1.0) is None
        pg_cluster.stop()
        try:
            with pytest.raises(StorageUnavailable):
                versions.claim(claim, 2.0)
            assert not state.healthy()
        finally:
            pg_cluster.start()
        deadline = time.monotonic() + 10
        while not state.healthy():
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert versions.last("k", "targets") == (1, "a" * 64)
    finally:
        state.close()


# -- a failed ROLLBACK never hides the error that caused it (SQLite) -----------------------

_ORIGINAL = "the statement's own error (injected)"
_FAULTS = ["rollback fails", "connection closed"]


class _BodyError(Exception):
    """The error a transaction's body raises: the one the caller must see."""


class _FaultyConnection(sqlite3.Connection):
    """A real SQLite connection whose ROLLBACK always fails (an I/O error, a vanished
    disk); a statement starting with ``fail_on`` fails, after closing the connection
    first when ``fault`` is "connection closed" (its ``in_transaction`` then raises)."""

    fail_on = ""
    fault = "rollback fails"
    rollbacks = 0

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        if sql.strip().upper() == "ROLLBACK":
            self.rollbacks += 1
            raise sqlite3.OperationalError("disk I/O error (injected into ROLLBACK)")
        if self.fail_on and sql.startswith(self.fail_on):
            if self.fault == "connection closed":
                self.close()
            raise sqlite3.OperationalError(_ORIGINAL)
        return super().execute(sql, parameters)


def _faulty(path: Path, fail_on: str = "", fault: str = "rollback fails") -> _FaultyConnection:
    conn = sqlite3.connect(
        path, factory=_FaultyConnection, isolation_level=None, check_same_thread=False
    )
    assert isinstance(conn, _FaultyConnection)
    conn.fail_on, conn.fault = fail_on, fault
    return conn


@pytest.mark.parametrize("fault", _FAULTS)
def test_a_failed_rollback_never_hides_the_error_that_caused_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, fault: str
) -> None:
    conn = _faulty(tmp_path / "t.db")
    conn.execute("CREATE TABLE t (x)")
    with (
        caplog.at_level(logging.WARNING, logger="signer.storage.sqlite"),
        pytest.raises(_BodyError, match="the body's own error"),
        transaction(conn),
    ):
        conn.execute("INSERT INTO t VALUES (1)")
        if fault == "connection closed":
            conn.close()
        raise _BodyError("the body's own error")
    if fault == "rollback fails":
        assert conn.rollbacks == 2  # tried once more: an open transaction fails every BEGIN
        assert caplog.text.count("ROLLBACK failed after an error") == 2, caplog.text
        assert "injected into ROLLBACK" in caplog.text
        conn.close()
    else:
        assert "no ROLLBACK possible after an error" in caplog.text, caplog.text
        assert "closed database" in caplog.text


def _swap(db: Database, conn: sqlite3.Connection) -> None:
    """Put ``conn`` in place of a store's ``Database`` connection (its threaded one)."""
    db._conn.close()
    db._conn = conn


@pytest.mark.parametrize("fault", _FAULTS)
def test_a_failed_rollback_in_a_store_never_hides_the_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, fault: str
) -> None:
    """Buckets' take, a version claim and an audit append: the statement's own error
    comes through each (StorageUnavailable from its cause for the stores), the failed
    ROLLBACK is logged."""
    buckets = SqliteBuckets(tmp_path / "ratelimit.db")
    _swap(buckets._db, _faulty(tmp_path / "ratelimit.db", "INSERT INTO buckets", fault))
    versions = SqliteVersions(tmp_path / "tuf.db")
    _swap(versions._db, _faulty(tmp_path / "tuf.db", "INSERT INTO tuf_versions", fault))
    chain = SqliteAuditChain(tmp_path / "audit.db")
    chain._conn.close()
    chain._conn = _faulty(tmp_path / "audit.db", "INSERT INTO audit", fault)
    row = tuple({"seq": 1, "time": 1.0}.get(c, c) for c in AUDIT_COLUMNS)
    claim = VersionClaim("k", "targets", 1, "a" * 64, "2030-01-01T00:00:00Z", "alice")
    try:
        with caplog.at_level(logging.WARNING, logger="signer.storage.sqlite"):
            with pytest.raises(StorageUnavailable, match="injected") as took:
                buckets.take("p", 1.0, 3, 1)
            with pytest.raises(StorageUnavailable, match="injected") as claimed:
                versions.claim(claim, 1.0)
            with pytest.raises(sqlite3.OperationalError) as appended:
                chain.append(lambda tip: [row])
        for caught in (took.value.__cause__, claimed.value.__cause__, appended.value):
            assert type(caught) is sqlite3.OperationalError and str(caught) == _ORIGINAL
        want = "ROLLBACK failed" if fault == "rollback fails" else "no ROLLBACK possible"
        assert caplog.text.count(want) >= 3, caplog.text
    finally:
        buckets.close()
        versions.close()
        chain.close()
