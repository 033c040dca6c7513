"""Requests that arrive together are signed together (one token call, one audit commit),
and each keeps its own principal, policy, rate limit, result and audit entry.

Real token, real daemon (one worker, so every call meets the same groups), real mTLS;
signatures are verified against the keys' public keys, audit rows read from the database.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import grpc
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from harness import HOLD_LOCK, Daemon, audit_rows, running_daemon
from signer_api.v1 import signer_pb2 as pb
from signer_api.v1 import signer_pb2_grpc as pb_grpc

POLICY = """
[[rules]]
principals = ["admin"]
operations = ["create", "read", "sign-raw"]

[[rules]]
principals = ["ci"]
operations = ["sign-raw", "read"]
keys = { roles = ["targets"] }

[[rules]]
principals = ["burst"]
operations = ["sign-raw", "read"]

[rate_limits]
burst = { rate = 0.001, burst = 3 }
"""

CALLS_EACH = 24


def _stub(daemon: Daemon, name: str) -> tuple[grpc.aio.Channel, pb_grpc.SigningServiceStub]:
    config = daemon.client_config(name)
    credentials = grpc.ssl_channel_credentials(
        config.ca.read_bytes(), config.key.read_bytes(), config.cert.read_bytes()
    )
    channel = grpc.aio.secure_channel(config.address, credentials)
    return channel, pb_grpc.SigningServiceStub(channel)


async def _storm(daemon: Daemon, targets: str, snapshot: str) -> dict[str, list[object]]:
    """Every principal's calls in flight at once; each result or status code, in order."""
    names = ("admin", "ci", "burst")
    opened = {name: _stub(daemon, name) for name in names}
    plan: list[tuple[str, str, bytes]] = []
    for n in range(CALLS_EACH):
        digest = hashlib.sha256(b"artefact-%d" % n).digest()
        plan.append(("admin", targets, digest))
        plan.append(("ci", targets if n % 2 else snapshot, digest))  # snapshot: denied
        plan.append(("burst", targets, digest))  # 3 pass, the rest over the limit

    async def one(name: str, key_id: str, digest: bytes) -> object:
        try:
            return await opened[name][1].Sign(pb.SignRequest(key_id=key_id, digest=digest))
        except grpc.aio.AioRpcError as exc:
            return exc.code()

    try:
        results = await asyncio.gather(*(one(*call) for call in plan))
    finally:
        for channel, _ in opened.values():
            await channel.close()
    out: dict[str, list[object]] = {name: [] for name in names}
    for (name, _, _), result in zip(plan, results, strict=True):
        out[name].append(result)
    return out


def test_concurrent_requests_keep_their_own_outcomes(tmp_path: Path) -> None:
    with running_daemon(
        tmp_path, policy=POLICY, clients=["admin", "ci", "burst"], workers=1
    ) as daemon:
        with daemon.client("admin") as admin:
            targets = admin.create_key("t", "ecdsa-sha2-nistp256", role="targets")
            snapshot = admin.create_key("s", "ecdsa-sha2-nistp256", role="snapshot")
        before = max((r["seq"] for r in audit_rows(daemon)), default=0)
        results = asyncio.run(_storm(daemon, targets.key_id, snapshot.key_id))

        public = load_pem_public_key(targets.public_key_pem.encode())
        assert isinstance(public, ec.EllipticCurvePublicKey)

        def verify(response: object, n: int) -> None:
            assert isinstance(response, pb.SignResponse), response
            assert response.key_id == targets.key_id
            digest = hashlib.sha256(b"artefact-%d" % n).digest()
            # DER, as securesystemslib holds it (hex); the token's raw r||s re-encoded
            public.verify(response.signature, digest, ec.ECDSA(Prehashed(hashes.SHA256())))

        for n, response in enumerate(results["admin"]):
            verify(response, n)
        for n, response in enumerate(results["ci"]):
            if n % 2:
                verify(response, n)
            else:
                assert response == grpc.StatusCode.PERMISSION_DENIED
        burst = results["burst"]
        passed = [n for n, r in enumerate(burst) if isinstance(r, pb.SignResponse)]
        assert len(passed) == 3
        for n in passed:
            verify(burst[n], n)
        assert all(
            r == grpc.StatusCode.RESOURCE_EXHAUSTED for n, r in enumerate(burst) if n not in passed
        )

        # One audit entry per request, with its own principal and outcome.
        rows = [r for r in audit_rows(daemon) if r["seq"] > before]
        assert len(rows) == 3 * CALLS_EACH
        counts: dict[tuple[str, str], int] = {}
        for row in rows:
            counts[(row["principal"], row["outcome"])] = (
                counts.get((row["principal"], row["outcome"]), 0) + 1
            )
        assert counts == {
            ("admin", "allowed"): CALLS_EACH,
            ("ci", "allowed"): CALLS_EACH // 2,
            ("ci", "denied"): CALLS_EACH // 2,
            ("burst", "allowed"): 3,
            ("burst", "denied"): CALLS_EACH - 3,
        }
        assert daemon.health() == 1  # still serving
    # The requests were grouped: the pipeline handed the log fewer callers (one per group)
    # than it had requests, and the log committed them in fewer transactions still.
    closed = re.findall(
        r"audit log closed: (\d+) entries in (\d+) commits .* from (\d+) callers", daemon.log()
    )
    assert closed, daemon.log()[-2000:]
    entries, commits, callers = map(int, closed[-1])
    assert entries >= 3 * CALLS_EACH
    assert commits <= callers < entries, (entries, commits, callers)


def _tuf(version: int) -> bytes:
    body = {"_type": "timestamp", "expires": "2030-01-01T00:00:00Z", "meta": {}, "version": version}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def test_callers_that_give_up_while_their_group_waits(tmp_path: Path) -> None:
    """A group waits (another process holds the TUF version database's lock); its callers'
    deadlines pass and they go away. The group still finishes: each request leaves its one
    audit entry, nothing hangs, and the next request signs at once."""
    with running_daemon(tmp_path, workers=1) as daemon:
        with daemon.client() as admin:
            keys = [admin.create_key(f"g{i}", "ecdsa-sha2-nistp256", "timestamp") for i in range(4)]
            admin.sign(keys[0].key_id, _tuf(1))
        before = max(r["seq"] for r in audit_rows(daemon))
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD_LOCK, str(daemon.state / "tuf.db"), "2"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"

        async def impatient() -> list[grpc.StatusCode]:
            channel, stub = _stub(daemon, "admin")
            try:
                calls = [
                    stub.Sign(pb.SignRequest(key_id=k.key_id, payload=_tuf(2)), timeout=0.5)
                    for k in keys
                ]
                codes = []
                for call in calls:
                    try:
                        await call
                        codes.append(grpc.StatusCode.OK)
                    except grpc.aio.AioRpcError as exc:
                        codes.append(exc.code())
                return codes
            finally:
                await channel.close()

        codes = asyncio.run(impatient())
        assert codes == [grpc.StatusCode.DEADLINE_EXCEEDED] * 4, codes
        holder.wait(timeout=10)

        with daemon.client() as admin:  # the daemon is free again, and not stuck
            assert admin.sign(keys[0].key_id, _tuf(3)).signature
            deadline = time.monotonic() + 10
            while len([r for r in audit_rows(daemon) if r["seq"] > before]) < 5:
                assert time.monotonic() < deadline, audit_rows(daemon)[-6:]
                time.sleep(0.05)
        rows = [r for r in audit_rows(daemon) if r["seq"] > before]
        assert len(rows) == 5  # one per request: the four that gave up, and the last
        # (in any order: the waiting group may finish after the last request)
        assert sorted(r["key_id"] for r in rows) == sorted(
            [*(k.key_id for k in keys), keys[0].key_id]
        )
        assert all(r["operation"] == "sign" for r in rows)
        assert daemon.health() == 1


def test_a_flood_over_the_rate_limit_is_audited_in_few_commits(tmp_path: Path) -> None:
    """Refusals of one group are recorded together: a principal flooding the daemon over
    its limit costs a commit per group, not one per request (which would make every
    other caller wait behind the flood's commits)."""
    flood = 60
    with running_daemon(tmp_path, policy=POLICY, clients=["admin", "burst"], workers=1) as daemon:
        with daemon.client("admin") as admin:
            key = admin.create_key("t", "ecdsa-sha2-nistp256", role="targets")
        before = max(r["seq"] for r in audit_rows(daemon))

        async def storm() -> list[object]:
            channel, stub = _stub(daemon, "burst")
            try:
                request = pb.SignRequest(key_id=key.key_id, digest=b"\1" * 32)

                async def one() -> object:
                    try:
                        return await stub.Sign(request)
                    except grpc.aio.AioRpcError as exc:
                        return exc.code()

                return await asyncio.gather(*(one() for _ in range(flood)))
            finally:
                await channel.close()

        results = asyncio.run(storm())
        signed = [r for r in results if isinstance(r, pb.SignResponse)]
        assert len(signed) == 3  # the burst
        assert results.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == flood - 3
        rows = [r for r in audit_rows(daemon) if r["seq"] > before]
        assert len(rows) == flood
        assert sum(r["outcome"] == "denied" for r in rows) == flood - 3
        assert daemon.health() == 1
    closed = re.findall(
        r"audit log closed: (\d+) entries in (\d+) commits .* from (\d+) callers", daemon.log()
    )
    entries, _, callers = map(int, closed[-1])
    assert callers <= flood * 2 // 3, (entries, callers)  # one a request: >= flood


def test_a_group_stuck_behind_a_lock_does_not_hold_up_the_queue(tmp_path: Path) -> None:
    """A TUF signature waits for the version database, which another process has locked;
    a raw signature asked meanwhile (it needs no version claim) is answered at once, and
    the waiting one signs once the lock is gone."""
    with running_daemon(tmp_path, workers=1) as daemon:
        with daemon.client() as admin:
            tuf_key = admin.create_key("tuf", "ecdsa-sha2-nistp256", "timestamp")
            raw_key = admin.create_key("raw", "ecdsa-sha2-nistp256", "targets")
            admin.sign(tuf_key.key_id, _tuf(1))
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD_LOCK, str(daemon.state / "tuf.db"), "3"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        locked_at = time.monotonic()

        async def both() -> tuple[object, object, float]:
            channel, stub = _stub(daemon, "admin")
            try:
                waiting = asyncio.ensure_future(
                    stub.Sign(pb.SignRequest(key_id=tuf_key.key_id, payload=_tuf(2)), timeout=30)
                )
                await asyncio.sleep(0.3)  # the TUF request is now waiting on the lock
                asked = time.monotonic()
                raw = await stub.Sign(
                    pb.SignRequest(key_id=raw_key.key_id, digest=b"\7" * 32), timeout=30
                )
                answered = time.monotonic() - asked
                return raw, await waiting, answered
            finally:
                await channel.close()

        raw, tuf_signed, answered = asyncio.run(both())
        holder.wait(timeout=10)
        assert isinstance(raw, pb.SignResponse) and raw.signature
        assert answered < 1.0 and time.monotonic() - locked_at > 2.5, answered
        assert isinstance(tuf_signed, pb.SignResponse) and tuf_signed.signature
        assert daemon.health() == 1
