"""Keys across worker processes: made by one, usable (or refused) through every other at once.

A real daemon with ``workers = 2`` shares its port with SO_REUSEPORT; each new connection
lands on one of the workers. Every attempt here uses fresh channels (a local subchannel
pool, so grpc opens a new connection each time), and the daemon's debug log tells which
worker generated a key object and which one had to find it on the token.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from harness import MODULE, PIN, Daemon, create_token, free_port
from signer_client import SignerClient
from signer_client.errors import FailedPreconditionError

ROUNDS = 30


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("workers")
    env = dict(create_token(root / "hsm"), SIGNER_LOG_LEVEL="DEBUG")
    daemon = Daemon(root=root, port=free_port(), env=env, workers=2)
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


def verify(public_pem: str, signature: bytes, payload: bytes) -> None:
    public = serialization.load_pem_public_key(public_pem.encode())
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(signature, payload, ec.ECDSA(hashes.SHA256()))  # raises if invalid


def worker_pids(daemon: Daemon) -> set[int]:
    """The processes listening on the daemon's port (one socket per worker, SO_REUSEPORT)."""
    out = subprocess.run(
        ["ss", "-tlnpH", f"( sport = :{daemon.port} )"], capture_output=True, text=True
    ).stdout
    return {int(pid) for pid in re.findall(r"pid=(\d+)", out)}


def serving_pids(daemon: Daemon) -> dict[int, int]:
    """Established connections to the daemon's port, per worker pid (from ss)."""
    out = subprocess.run(
        ["ss", "-tnpH", "state", "established", f"( sport = :{daemon.port} )"],
        capture_output=True,
        text=True,
    ).stdout
    counts: dict[int, int] = {}
    for pid in re.findall(r"pid=(\d+)", out):
        counts[int(pid)] = counts.get(int(pid), 0) + 1
    return counts


def test_a_new_key_signs_at_once_through_every_worker(pair: Daemon) -> None:
    """Under load (other connections keep both workers signing, which is when SoftHSM's
    index of another worker can miss a new object), with fresh connections per call."""
    import threading

    deadline = time.monotonic() + 20
    while len(workers := worker_pids(pair)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)  # the second worker may still be opening its token
    assert len(workers) == 2
    hit: set[int] = set()
    background = [pair.fresh_client() for _ in range(4)]
    base = background[0].create_key("base", "ecdsa-sha2-nistp256", "targets")
    stop = threading.Event()
    errors: list[Exception] = []

    def load(client: SignerClient) -> None:
        while not stop.is_set():
            try:
                client.sign_batch(base.key_id, [b"load"] * 8)
            except Exception as exc:  # reported below
                errors.append(exc)

    threads = [threading.Thread(target=load, args=(c,)) for c in background]
    for t in threads:
        t.start()
    try:
        _rounds(pair, hit)
    finally:
        stop.set()
        for t in threads:
            t.join()
        for c in background:
            c.close()
    assert not errors, errors[:3]
    assert workers <= hit, f"not every worker was reached: {hit} of {workers}"
    # Keys were generated in one worker and found on the token by the other.
    log = pair.log()
    made = dict(
        (oid, w) for w, oid in re.findall(r"worker (\d) DEBUG .*generated key object (\w+)", log)
    )
    found = re.findall(r"worker (\d) DEBUG .*found PRIVATE_KEY object (\w+)", log)
    crossed = {(made[oid], w) for w, oid in found if oid in made and made[oid] != w}
    assert crossed == {("0", "1"), ("1", "0")}, crossed
    assert pair.proc is not None and pair.proc.poll() is None


def _rounds(pair: Daemon, hit: set[int]) -> None:
    for i in range(ROUNDS):
        clients = [pair.fresh_client() for _ in range(4)]
        try:
            for c in clients:
                c.list_keys(role="no-such-role")  # connect now, so ss sees every one
            hit.update(serving_pids(pair))
            key = clients[0].create_key(f"w-{i}", "ecdsa-sha2-nistp256", "targets")
            payload = f"round {i}".encode()
            signed = clients[1].sign(key.key_id, payload)
            verify(key.public_key_pem, signed.signature, payload)
            for c in clients[2:]:
                items = [payload, payload + b"!"]
                results = c.sign_batch(key.key_id, items)
                assert [r.error for r in results] == [None, None], f"round {i}"
                for r, p in zip(results, items, strict=True):
                    verify(key.public_key_pem, r.signature, p)
        finally:
            for c in clients:
                c.close()


def _refused_everywhere(daemon: Daemon, key_id: str, state: str) -> None:
    """Refused by Sign and SignBatch on connections served by every worker."""
    workers = set(worker_pids(daemon))
    hit: set[int] = set()
    for _ in range(10):
        clients = [daemon.fresh_client() for _ in range(4)]
        try:
            for c in clients:
                c.list_keys(role="no-such-role")  # connect now, so ss sees every one
            hit.update(serving_pids(daemon))
            for c in clients:
                with pytest.raises(FailedPreconditionError, match=state):
                    c.sign(key_id, b"after")
                results = c.sign_batch(key_id, [b"after"])
                assert isinstance(results[0].error, FailedPreconditionError), results[0]
                assert state in str(results[0].error)
        finally:
            for c in clients:
                c.close()
        if workers <= hit:
            break
    assert len(workers) == 2 and workers <= hit, f"refused by {hit} of {workers}"


def _warm(daemon: Daemon, key_id: str) -> None:
    """Sign through many connections, so both workers hold a cached handle."""
    for _ in range(8):
        with daemon.fresh_client() as c:
            c.sign_batch(key_id, [b"warm"])


def test_retired_and_destroyed_keys_are_refused_at_once_through_every_worker(
    pair: Daemon,
) -> None:
    with pair.fresh_client() as c:
        retired = c.create_key("to-retire", "ecdsa-sha2-nistp256", "targets")
        destroyed = c.create_key("to-destroy", "ecdsa-sha2-nistp256", "targets")
    _warm(pair, retired.key_id)
    _warm(pair, destroyed.key_id)
    with pair.fresh_client() as c:
        c.retire_key(retired.key_id)
    _refused_everywhere(pair, retired.key_id, "retired")
    with pair.fresh_client() as c:
        c.destroy_key(destroyed.key_id, destroyed.key_id)
    _refused_everywhere(pair, destroyed.key_id, "destroyed")
    assert pair.proc is not None and pair.proc.poll() is None
    assert pair.health() == 1  # SERVING: a refusal is no token fault


# -- the token itself, in this process, against objects changed by another process ----------

_OTHER = r"""
import os, sys, pkcs11
from pkcs11 import Attribute
lib = pkcs11.lib(sys.argv[1])
session = lib.get_token(token_label=sys.argv[2]).open(rw=True, user_pin=os.environ["SIGNER_PIN"])
for obj in list(session.get_objects({Attribute.ID: bytes.fromhex(sys.argv[3])})):
    obj.destroy()
"""


_CACHED_HANDLE = r"""
import hashlib, os, subprocess, sys
from signer.algorithms import get_algorithm
from signer.token import KeyObjectMissing, SignItem, Token, TokenSettings
module, label, pin, other = sys.argv[1:5]
token = Token(TokenSettings(module, label, pin, probe_interval=0))
token.open()
alg = get_algorithm("ecdsa-sha2-nistp256")
object_id, _ = token.generate(alg, "doomed")
digest = hashlib.sha256(b"x").digest()
token.sign(object_id, alg, digest)  # the handle is cached now
subprocess.run([sys.executable, "-c", other, module, label, object_id], check=True)
try:
    token.sign(object_id, alg, digest)
    raise SystemExit("signed with a destroyed key")
except KeyObjectMissing:
    pass
(result,) = token.sign_many([SignItem(object_id, alg, digest)])
assert isinstance(result, KeyObjectMissing), result
assert token.healthy, token.fault
fresh, _ = token.generate(alg, "alive")
token.sign(fresh, alg, digest)  # the session still works
token.close()
print("ok")
"""


def test_cached_handle_of_an_object_destroyed_elsewhere_is_a_clean_refusal(
    tmp_path: Path,
) -> None:
    """A Token (in a process of its own) whose cached handle names an object that another
    process destroyed: KeyObjectMissing (FAILED_PRECONDITION), no signature, still healthy."""
    env = create_token(tmp_path / "hsm", "w-token")
    result = subprocess.run(
        [sys.executable, "-c", _CACHED_HANDLE, MODULE, "w-token", PIN, _OTHER],
        env=dict(os.environ, **env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
