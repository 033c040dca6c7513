"""A full disk: the daemon refuses (UNAVAILABLE, "disk is full"), stays up, and recovers
by itself once space is freed. The state directory sits on a real, small tmpfs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from authz_helpers import audit_rows, sha256, verify

from harness import fill_filesystem, running_daemon, small_filesystem
from signer.audit.verify import verify as verify_log
from signer.config import AuditConfig
from signer_client import ClientError

CHECKPOINTS = "[audit]\ncheckpoint_entries = 10\ncheckpoint_seconds = 0.3\n"
SETTINGS = AuditConfig(10, 0.3)


@pytest.fixture
def small_state(tmp_path: Path) -> Iterator[Path]:
    """``tmp_path/state`` as its own 8 MiB tmpfs (root only), unmounted afterwards."""
    with small_filesystem(tmp_path / "state", "8m") as state:
        yield state


def test_a_full_disk_refuses_signing_and_recovers_without_restart(
    tmp_path: Path, small_state: Path
) -> None:
    with running_daemon(tmp_path, clients=["admin"], extra_config=CHECKPOINTS) as daemon:
        assert daemon.state == small_state
        with daemon.client("admin") as admin:
            key = admin.create_key("full-disk", role="targets")
            verify(key, b"before", admin.sign(key.key_id, b"before").signature)
        filler = fill_filesystem(small_state)
        refused: ClientError | None = None
        with daemon.client("admin") as admin:
            for i in range(200):  # the log's files may still have room for a few pages
                try:
                    admin.sign(key.key_id, f"while full {i}".encode())
                except ClientError as exc:
                    refused = exc
                    break
        assert refused is not None, "signing went on with a full disk"
        assert refused.code == grpc.StatusCode.UNAVAILABLE
        assert "the disk is full" in refused.message, refused.message
        assert "nothing was signed" in refused.message
        assert daemon.proc is not None and daemon.proc.poll() is None  # still running
        daemon.wait_serving(timeout=5)
        assert "Traceback" not in daemon.log()

        filler.unlink()  # space again: no restart
        payload = b"after the disk was freed"
        with daemon.client("admin") as admin:
            verify(key, payload, admin.sign(key.key_id, payload).signature)
        assert daemon.proc.poll() is None
        rows = audit_rows(daemon.state, "payload_sha256 = ?", (sha256(payload),))
        assert [r["outcome"] for r in rows] == ["allowed"]
    # Stopped cleanly: the last checkpoint covers the whole chain, which verifies.
    report = verify_log(daemon.state / "audit.db", daemon.state / "keys.db", settings=SETTINGS)
    assert report.ok, [str(p) for p in report.problems]
    assert report.last_checkpoint_seq == report.tip_seq
