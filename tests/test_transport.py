"""The transport: gRPC's receive limit follows ours, concurrent calls are bounded, silent
and idle connections are closed, and the daemon has descriptors enough for them."""

from __future__ import annotations

import hashlib
import resource
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import grpc
import pytest

from harness import Daemon, running_daemon
from signer.config import MESSAGE_OVERHEAD_BYTES, ServerConfig
from signer_api.v1 import signer_pb2 as pb
from signer_api.v1 import signer_pb2_grpc
from signer_client import ClientError, InvalidArgumentError

MIB = 1024 * 1024


def _alive(daemon: Daemon) -> None:
    """The daemon survived: its process runs and it still signs."""
    assert daemon.proc is not None and daemon.proc.poll() is None, daemon.log()
    client = daemon.client()
    keys = client.list_keys() or [client.create_key("alive", "ed25519", "targets")]
    key = keys[0]
    assert client.sign(key.key_id, b"still here").signature


def test_receive_limit_follows_payload_and_batch_limits() -> None:
    config = ServerConfig()
    assert config.max_payload_bytes < config.max_message_bytes < config.max_payload_bytes + MIB
    assert config.max_message_bytes < 64 * MIB  # was at least 64 MiB, whatever the settings


def test_oversize_message_is_refused_by_grpc_and_max_size_passes(tmp_path: Path) -> None:
    options = "max_payload_bytes = 1048576\nmax_batch_items = 1024"
    with running_daemon(tmp_path / "d", server_options=options) as daemon:
        client = daemon.client()
        key = client.create_key("limits", "ecdsa-sha2-nistp256", "targets")
        assert client.sign(key.key_id, b"x" * MIB).signature  # the largest payload passes
        with pytest.raises(InvalidArgumentError, match="the limit is 1048576"):
            client.sign(key.key_id, b"x" * (MIB + 1))  # just over: still our clear message
        with pytest.raises(ClientError, match="RESOURCE_EXHAUSTED") as info:
            client.sign(key.key_id, b"x" * (2 * MIB))  # far over: gRPC refuses the message
        assert "larger than max" in str(info.value)
        # A SignBatch of the most items, each naming its key and carrying a digest, fits.
        digests = [hashlib.sha256(b"%d" % i).digest() for i in range(1024)]
        with daemon.channel() as channel:
            stub = signer_pb2_grpc.SigningServiceStub(channel)
            items = [pb.SignBatchItem(key_id=key.key_id, digest=d) for d in digests]
            reply = stub.SignBatch(pb.SignBatchRequest(items=items), timeout=60)
        assert len(reply.results) == 1024 and all(r.status.code == 0 for r in reply.results)
        _alive(daemon)


def test_receive_limit_makes_room_for_the_largest_batch(tmp_path: Path) -> None:
    """Small payloads, many items: the receive limit comes from the batch term
    (max_batch_items x BATCH_ITEM_BYTES), so a full SignBatch of digests, far larger than
    the payload limit, reaches the daemon; one item more is our INVALID_ARGUMENT, a
    message over the computed limit gRPC's RESOURCE_EXHAUSTED."""
    payload_limit, items_limit = 1024, 4096
    config = ServerConfig(max_payload_bytes=payload_limit, max_batch_items=items_limit)
    options = f"max_payload_bytes = {payload_limit}\nmax_batch_items = {items_limit}"
    with running_daemon(tmp_path / "d", server_options=options) as daemon:
        client = daemon.client()
        key = client.create_key("many", "ecdsa-sha2-nistp256", "targets")
        digests = [hashlib.sha256(b"%d" % i).digest() for i in range(items_limit + 1)]
        items = [pb.SignBatchItem(key_id=key.key_id, digest=d) for d in digests]
        full = pb.SignBatchRequest(items=items[:items_limit])
        # What the test stands on: the batch is far over what the payload term allows.
        assert full.ByteSize() > 4 * (payload_limit + MESSAGE_OVERHEAD_BYTES)
        assert full.ByteSize() < config.max_message_bytes
        with daemon.channel() as channel:
            stub = signer_pb2_grpc.SigningServiceStub(channel)
            reply = stub.SignBatch(full, timeout=120)
            assert len(reply.results) == items_limit
            assert all(r.status.code == 0 and r.signature for r in reply.results)

            with pytest.raises(grpc.RpcError) as info:  # one item more: our own refusal
                stub.SignBatch(pb.SignBatchRequest(items=items), timeout=60)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert info.value.details() == (
                f"{items_limit + 1} items; a batch holds at most {items_limit}"
            )

            big = [pb.SignBatchItem(key_id=key.key_id, payload=b"x" * 300)] * items_limit
            over = pb.SignBatchRequest(items=big)  # each payload allowed, the whole too big
            assert over.ByteSize() > config.max_message_bytes
            with pytest.raises(grpc.RpcError) as info:
                stub.SignBatch(over, timeout=60)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "larger than max" in (info.value.details() or "")
        _alive(daemon)


def test_concurrent_calls_beyond_the_limit_get_resource_exhausted(tmp_path: Path) -> None:
    with running_daemon(tmp_path / "d", server_options="max_concurrent_rpcs = 2") as daemon:
        client = daemon.client()
        key = client.create_key("slow", "rsassa-pss-sha256", "targets")
        payloads = [b"p%d" % i for i in range(150)]  # RSA-3072 in SoftHSM: a slow batch
        outcomes: list[str] = []

        def call() -> None:
            try:
                daemon.client().sign_batch(key.key_id, payloads)
                outcomes.append("ok")
            except ClientError as exc:
                outcomes.append(str(exc))

        threads = [threading.Thread(target=call) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        refused = [o for o in outcomes if "RESOURCE_EXHAUSTED" in o]
        assert "ok" in outcomes and refused, outcomes
        assert all(o == "ok" or "RESOURCE_EXHAUSTED" in o for o in outcomes), outcomes
        _alive(daemon)


@contextmanager
def _open_files_soft_limit(soft: int) -> Iterator[None]:
    """Start children with a low soft RLIMIT_NOFILE (as on many hosts), then restore."""
    old = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, old[1]), old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, old)


def _open_files_limits(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open-files line")


def test_silent_connections_neither_starve_clients_nor_the_token(tmp_path: Path) -> None:
    count, timeout = 1100, 3.0
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 2 * count + 200:
        pytest.skip(f"the hard open-files limit ({hard}) is too low for {count} sockets")
    with ExitStack() as stack:
        with _open_files_soft_limit(1024):  # the daemon starts with 1024, as on many hosts
            daemon = stack.enter_context(
                running_daemon(
                    tmp_path / "d", server_options=f"handshake_timeout_seconds = {timeout}"
                )
            )
        assert daemon.proc is not None
        soft, hard_now = _open_files_limits(daemon.proc.pid)
        assert soft == hard_now > 1024  # raised to the hard limit at start
        client = daemon.client()
        key = client.create_key("busy", "ed25519", "targets")
        assert client.sign(key.key_id, b"before").signature
        socks = []
        opened = time.monotonic()
        for _ in range(count):  # connect, send nothing: never a TLS handshake
            s = socket.create_connection(("127.0.0.1", daemon.port), timeout=5)
            socks.append(s)
        time.sleep(0.5)  # the daemon has accepted them all
        fresh = daemon.client()  # a new connection while 1,100 sit silent
        assert fresh.sign(key.key_id, b"during").signature
        assert client.sign(key.key_id, b"during, old connection").signature
        # The handshake timeout closes every one of them: each sees EOF in time.
        closed = 0
        for s in socks:
            s.settimeout(max(0.1, opened + timeout + 10 - time.monotonic()))
            try:
                if s.recv(1) == b"":
                    closed += 1
            except (TimeoutError, ConnectionResetError):
                pass
            s.close()
        assert closed == count, f"{count - closed} silent connections still open"
        assert time.monotonic() - opened < timeout + 10
        assert daemon.client().sign(key.key_id, b"after").signature
        _alive(daemon)


def test_idle_connections_are_closed(tmp_path: Path) -> None:
    with running_daemon(tmp_path / "d", server_options="idle_timeout_seconds = 1.5") as daemon:
        states: list[grpc.ChannelConnectivity] = []
        with daemon.channel() as channel:
            channel.subscribe(states.append, try_to_connect=False)
            stub = signer_pb2_grpc.KeyServiceStub(channel)
            stub.ListKeys(pb.ListKeysRequest(), timeout=5)
            ready = time.monotonic()
            deadline = ready + 10
            while grpc.ChannelConnectivity.READY not in states or states[-1] is (
                grpc.ChannelConnectivity.READY
            ):
                assert time.monotonic() < deadline, f"idle connection never closed: {states}"
                time.sleep(0.1)
            assert time.monotonic() - ready >= 1.0  # closed for idleness, not at once
            stub.ListKeys(pb.ListKeysRequest(), timeout=5)  # a new connection just works
        _alive(daemon)


def test_plain_grpc_error_for_oversize_batch(tmp_path: Path) -> None:
    """A SignBatch far beyond the limit is refused by gRPC, the daemon unharmed."""
    options = "max_payload_bytes = 65536\nmax_batch_items = 16"
    with running_daemon(tmp_path / "d", server_options=options) as daemon:
        client = daemon.client()
        key = client.create_key("b", "ed25519", "targets")
        with pytest.raises(ClientError, match="RESOURCE_EXHAUSTED"):
            client.sign_batch(key.key_id, [b"x" * 60_000] * 16)  # ~1 MiB > 64 KiB + overhead
        _alive(daemon)
