"""Nothing a client sends yields INTERNAL (issue 8, section 4): payloads, names, echoes.

A real daemon over mTLS and a real token; every refusal is followed by a check that the
daemon still serves. The VersionStore's full-disk mapping runs on a real, tiny tmpfs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from authz_helpers import audit_rows, tuf_payload

from harness import Daemon, fill_filesystem, small_filesystem
from signer.errors import InvalidArgument, PermissionDenied, StorageUnavailable, shown
from signer.names import check_label, check_repository, check_role
from signer.payload import MAX_DEPTH, NotJson, parse_payload
from signer.policy.tuf import TufPayload, VersionStore, parse_tuf, tuf_fields
from signer.registry import KeyRecord
from signer.service.errors import MAX_MESSAGE_CHARS, status_message
from signer_client import ClientError

# -- payloads the daemon must refuse as INVALID_ARGUMENT ---------------------------------


def _with(extra: bytes) -> bytes:
    """A canonical targets payload with ``extra`` spliced in as its first member."""
    payload = tuf_payload("targets", 1)
    assert payload.startswith(b'{"_type"')
    return b"{" + extra + b"," + payload[1:]


BAD_PAYLOADS = {
    "lone surrogate": (_with(b'"_note":"\\ud800"'), "lone surrogate"),
    "lone low surrogate in a key": (_with(b'"\\udc00":1'), "lone surrogate"),
    "duplicate key": (_with(b'"_type":"root"'), "duplicate key '_type'"),
    "NaN": (_with(b'"_x":NaN'), "NaN is not a JSON number"),
    "Infinity": (_with(b'"_x":-Infinity'), "-Infinity is not a JSON number"),
    "invalid UTF-8": (_with(b'"_x":"\xff\xfe"'), "not valid UTF-8"),
    "huge integer": (_with(b'"_x":' + b"9" * 5000), "integer of 5000 digits"),
    "deep nesting": (_with(b'"_x":' + b"[" * 5000 + b"]" * 5000), "nested deeper than"),
}


def test_parse_payload_refuses_what_readers_disagree_on() -> None:
    for name, (payload, complaint) in BAD_PAYLOADS.items():
        with pytest.raises(InvalidArgument) as info:
            parse_payload(payload)
        assert complaint in info.value.message, name
        assert not isinstance(info.value, NotJson), name
        with pytest.raises(InvalidArgument):  # and so does the TUF classification
            parse_tuf(payload)
    good = tuf_payload("targets", 1)
    assert parse_payload(good)["_type"] == "targets"
    assert parse_tuf(good) is not None
    assert parse_payload(b'{"a":"\\ud83d\\ude00"}') == {"a": "\U0001f600"}  # a proper pair
    assert parse_payload(b'{"a":"x\ny"}') == {"a": "x\ny"}  # canonical JSON leaves these raw
    nested = b'{"a":' + b"[" * (MAX_DEPTH - 1) + b"]" * (MAX_DEPTH - 1) + b"}"
    parse_payload(nested)  # the limit itself is fine
    for not_json in (b"{not json", b"[1, 2]", b"\xef\xbb\xbf{}"):
        with pytest.raises(NotJson):
            parse_payload(not_json)
    assert parse_tuf(b"{not json") is None  # raw signing, as before
    assert parse_tuf(b'{"_type": "targets"}') is None  # not canonical: raw


def test_tuf_dates_are_matched_whole() -> None:
    fields: dict[str, Any] = {"_type": "targets", "version": 1}
    for bad in ("2030-1-01T00:00:00Z", "2030-01-01T00:00:00Z\n", "\uff12030-01-01T00:00:00Z"):
        with pytest.raises(InvalidArgument, match="not a TUF date"):
            tuf_fields({**fields, "expires": bad})
    assert tuf_fields({**fields, "expires": "2030-01-01T00:00:00Z"}).version == 1
    with pytest.raises(InvalidArgument) as info:
        tuf_fields({**fields, "version": "x" * 100_000, "expires": "2030-01-01T00:00:00Z"})
    assert len(info.value.message) < 200


@pytest.fixture(scope="module")
def keys(daemon: Daemon) -> dict[str, Any]:
    with daemon.client("admin") as admin:
        return {
            "targets": admin.create_key("input-targets", role="targets"),
            "root": admin.create_key("input-root", role="root", quorum=True),
        }


@pytest.fixture(scope="module")
def alice(daemon: Daemon) -> Iterator[Any]:
    with daemon.client("alice") as client:
        yield client


def _alive(daemon: Daemon, client: Any, key: Any) -> None:
    daemon.wait_serving(timeout=5)
    assert client.get_key(key.key_id).key_id == key.key_id


@pytest.mark.parametrize("name", sorted(BAD_PAYLOADS))
def test_sign_refuses_bad_json(daemon: Daemon, keys: dict[str, Any], alice: Any, name: str) -> None:
    payload, complaint = BAD_PAYLOADS[name]
    key = keys["targets"]
    with pytest.raises(ClientError) as info:
        alice.sign(key.key_id, payload)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT, info.value
    assert complaint in info.value.message
    digest = hashlib.sha256(payload).hexdigest()
    rows = audit_rows(daemon.state, "payload_sha256 = ?", (digest,))
    assert [(r["operation"], r["code"]) for r in rows] == [("sign", "INVALID_ARGUMENT")]
    _alive(daemon, alice, key)


def test_sign_batch_refuses_a_lone_surrogate_item(
    daemon: Daemon, keys: dict[str, Any], alice: Any
) -> None:
    key = keys["targets"]
    bad, _ = BAD_PAYLOADS["lone surrogate"]
    good = tuf_payload("targets", 2)
    results = alice.sign_batch(key.key_id, [bad, good])
    assert results[0].error is not None
    assert results[0].error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "lone surrogate" in results[0].error.message
    assert results[1].error is None and results[1].signature  # the good item still signs
    _alive(daemon, alice, key)


def test_request_signature_refuses_a_lone_surrogate(
    daemon: Daemon, keys: dict[str, Any], alice: Any
) -> None:
    root = keys["root"]
    payload = tuf_payload("root", 1)
    bad = b"{" + b'"_note":"\\ud800",' + payload[1:]
    with pytest.raises(ClientError) as info:
        alice.request_signature(root.key_id, bad)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT, info.value
    assert "lone surrogate" in info.value.message
    _alive(daemon, alice, root)


def test_raw_blobs_that_are_not_json_still_sign(
    daemon: Daemon, keys: dict[str, Any], alice: Any
) -> None:
    """No policy file here, so raw signing is allowed: non-JSON stays raw, as before."""
    assert alice.sign(keys["targets"].key_id, b"{not json at all").signature


# -- client input echoed in status messages ----------------------------------------------


def test_a_huge_key_id_is_not_found_not_resource_exhausted(
    daemon: Daemon, keys: dict[str, Any], alice: Any
) -> None:
    huge = "k" * (1 << 20)
    for call in (
        lambda: alice.get_key(huge),
        lambda: alice.sign(huge, tuf_payload("targets", 3)),
        lambda: alice.request_signature(huge, tuf_payload("root", 1)),
        lambda: alice.get_signature_request(huge),
        lambda: alice.get_key("\n" * (1 << 20)),  # escaped, so twice as long
    ):
        with pytest.raises(ClientError) as info:
            call()
        assert info.value.code in (
            grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.INVALID_ARGUMENT,
        ), info.value
        assert len(info.value.message) <= MAX_MESSAGE_CHARS
        assert info.value.message.endswith("...") or len(info.value.message) < 200
    _alive(daemon, alice, keys["targets"])


def test_status_message_and_shown() -> None:
    """Every status message is capped and kept on one line (the trailer is one header)."""
    assert status_message("a\nb\tc\x00\u2028d\ud800") == "a\\nb\\tc\\x00\\u2028d\\ud800"
    capped = status_message("x" * 10_000)
    assert len(capped) == MAX_MESSAGE_CHARS and capped.endswith("...")
    wide = status_message("\U0001f600" * MAX_MESSAGE_CHARS)  # 4 bytes each in UTF-8
    assert len(wide.encode()) <= 2000 and wide.endswith("...")
    assert shown("abc") == "'abc'"
    assert shown("a\nb") == "'a\\nb'"
    assert shown("x" * 100, limit=4) == "'xxxx'... (100 characters)"


# -- names are matched whole -------------------------------------------------------------


def test_names_are_matched_whole() -> None:
    for check, good in (
        (check_label, "ts-1"),
        (check_role, "targets"),
        (check_role, "targets/releases"),
        (check_repository, "docker.io/acme/web"),
        (check_repository, ""),
    ):
        check(good)
        for bad in (good + "\n", good + "\n\n", good + "\x00", "\n" + good):
            with pytest.raises(InvalidArgument):
                check(bad)
    with pytest.raises(InvalidArgument, match="role must be 1-128 characters"):
        check_role("targets\n")
    with pytest.raises(InvalidArgument, match="label must be 1-128 characters"):
        check_label("")
    with pytest.raises(InvalidArgument, match="repository may hold"):
        check_repository("docker.io/x\n")


def test_a_role_with_a_trailing_newline_is_refused(daemon: Daemon) -> None:
    with daemon.client("admin") as admin:
        for field in ("label", "role", "repository"):
            values = {"label": "newline", "role": "targets", "repository": "docker.io/x"}
            values[field] += "\n"
            with pytest.raises(ClientError) as info:
                admin.create_key(
                    values["label"], role=values["role"], repository=values["repository"]
                )
            assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT, field
            assert field in info.value.message
        assert not [k for k in admin.list_keys() if k.label.startswith("newline")]
    daemon.wait_serving(timeout=5)


# -- the TUF version store on a full disk ------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 512 KiB tmpfs (root only); unmounted afterwards."""
    with small_filesystem(tmp_path / "tiny", "512k", mode="0755") as mountpoint:
        yield mountpoint


def _record(n: int) -> KeyRecord:
    return KeyRecord(
        key_id=f"key-{n}",
        object_id=f"obj-{n}",
        algorithm_name="ecdsa-sha2-nistp256",
        label=f"label-{n}",
        role="targets",
        repository="",
        public_key_pem="",
        tuf_key_json="",
    )


def _payload(version: int) -> TufPayload:
    return tuf_fields({"_type": "targets", "version": version, "expires": "2030-01-01T00:00:00Z"})


def test_version_store_on_a_full_disk_is_unavailable(tiny_disk: Path) -> None:
    store = VersionStore(tiny_disk / "tuf.db")
    try:
        key = _record(0)
        store.claim(key, _payload(1), "a" * 64, "alice")
        filler = fill_filesystem(tiny_disk)
        failures = []
        # Distinct keys and versions until SQLite needs a page it cannot get.
        for n in range(1, 2000):
            try:
                store.claim(_record(n), _payload(n + 1), f"{n:064x}", "alice" * 50)
            except StorageUnavailable as exc:
                failures.append(exc)
                break
        assert failures, "the full disk never refused a write"
        refusal = failures[0]
        assert refusal.code == grpc.StatusCode.UNAVAILABLE
        assert "is full" in refusal.message and "tuf.db" in refusal.message, refusal.message
        assert "rollback" not in refusal.message
        # The rules still hold while the disk is full, and the store recovers after.
        with pytest.raises(PermissionDenied):
            store.claim(key, _payload(1), "b" * 64, "alice")
        filler.unlink()
        store.claim(key, _payload(2), "c" * 64, "alice")
        assert store.last(key.key_id, key.role) == (2, "c" * 64)
    finally:
        store.close()
