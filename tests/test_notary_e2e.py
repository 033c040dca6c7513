"""End to end: an unmodified notary-server signs through signerd, driven by the notary CLI.

Debian's ``notary`` package (notary, notary-server) talks to a real signerd (SoftHSM
token, mutual TLS, a policy file that limits notary-server to timestamp and snapshot
keys). The CLI initialises a repository, publishes targets, reads them back from a fresh
client, adds a delegation and publishes through it, and has the server rotate its
timestamp and snapshot keys. Then: every signature notary-server serves verifies, the
server-held keys are objects in the token, and the audit log holds the requests.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from notary_harness import (
    NOTARY_SERVER_PRINCIPAL,
    NotaryCLI,
    NotaryServer,
    delegation_key,
    https_get,
    require,
    start_notary_server,
)

from harness import Daemon, running_daemon
from signer.notary import keys as nkeys

GUN = "example.com/app"

# notary-server's principal may create, read and use timestamp and snapshot keys; it may
# not delete them nor touch any other key. "admin" (the harness's health checks) may read.
POLICY = f"""
[[rules]]
principals = ["{NOTARY_SERVER_PRINCIPAL}"]
operations = ["create", "sign", "read"]
keys = {{ roles = ["timestamp", "snapshot"], repositories = ["*"] }}

[[rules]]
principals = ["admin"]
operations = ["read", "audit"]
keys = {{ roles = ["*"], repositories = ["*"] }}
"""


@dataclass
class Deployment:
    daemon: Daemon
    server: NotaryServer
    root: Path
    algorithm: str

    def logs(self) -> str:
        return (
            f"--- signerd log (tail)\n{self.daemon.log()[-6000:]}\n"
            f"--- notary-server log (tail)\n{self.server.log()[-6000:]}"
        )

    def cli(self, trust_dir: str) -> NotaryCLI:
        return NotaryCLI(self.server, self.root / trust_dir, self.daemon.pki / "ca.pem", self.logs)


@pytest.fixture(scope="module", params=["ecdsa", "ed25519"])
def deployment(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    require("notary-server")
    require("notary")
    root = tmp_path_factory.mktemp("notary")
    with running_daemon(
        root / "signerd", clients=["admin", NOTARY_SERVER_PRINCIPAL], policy=POLICY
    ) as daemon:
        server = start_notary_server(root, daemon, request.param)
        try:
            yield Deployment(daemon, server, root, request.param)
        finally:
            server.proc.send_signal(signal.SIGTERM)
            try:
                server.proc.wait(10)
            except subprocess.TimeoutExpired:
                server.proc.kill()
                server.proc.wait()


# -- verifying what notary-server serves ---------------------------------------------------


def signed_bytes(text: str) -> bytes:
    """The exact bytes under "signed": notary serves them as they were signed."""
    prefix = '{"signed":'
    assert text.startswith(prefix), text[:80]
    _, end = json.JSONDecoder().raw_decode(text, len(prefix))
    return text[len(prefix) : end].encode()


def public_of(key: dict[str, Any]) -> tuple[str, bytes]:
    """(algorithm for nkeys.verify, public bytes) of a key in notary metadata."""
    keytype = key["keytype"]
    public = base64.b64decode(key["keyval"]["public"])
    if keytype in ("ecdsa-x509", "ed25519-x509"):
        cert = x509.load_pem_x509_certificate(public)
        spki = cert.public_key()
        if keytype == "ecdsa-x509":
            return "ecdsa", nkeys.public_bytes(spki)
        return "ed25519", nkeys.public_bytes(spki)
    return keytype, public


def fetch(deployment: Deployment, role: str) -> tuple[dict[str, Any], str]:
    with https_get(deployment.server, f"/v2/{GUN}/_trust/tuf/{role}.json") as resp:
        text = resp.read().decode()
    return json.loads(text), text


def verify_served(deployment: Deployment, role: str, keys: dict[str, Any]) -> dict[str, Any]:
    """Every signature on the served ``role`` verifies against ``keys``; returns the doc."""
    doc, text = fetch(deployment, role)
    content = signed_bytes(text)
    assert doc["signatures"], f"{role}.json is unsigned"
    for sig in doc["signatures"]:
        assert sig["keyid"] in keys, f"{role}.json: signature by unknown key {sig['keyid']}"
        algorithm, public = public_of(keys[sig["keyid"]])
        signature = base64.b64decode(sig["sig"])
        assert nkeys.verify(algorithm, public, signature, content), (
            f"{role}.json: signature by {sig['keyid']} ({sig['method']}) does not verify"
        )
    return doc


def verify_repository(deployment: Deployment) -> dict[str, dict[str, Any]]:
    root, _ = fetch(deployment, "root")
    keys = root["signed"]["keys"]
    docs = {"root": verify_served(deployment, "root", keys)}
    for role in ("targets", "snapshot", "timestamp"):
        docs[role] = verify_served(deployment, role, keys)
    for delegated in docs["targets"]["signed"].get("delegations", {}).get("roles", []):
        name = delegated["name"]
        docs[name] = verify_served(
            deployment, name, docs["targets"]["signed"]["delegations"]["keys"]
        )
    return docs


def fetch_version(deployment: Deployment, role: str, version: int) -> str | None:
    """``<version>.<role>.json`` as notary-server serves it, or None past the last one."""
    try:
        with https_get(deployment.server, f"/v2/{GUN}/_trust/tuf/{version}.{role}.json") as resp:
            return str(resp.read().decode())
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def verify_history(deployment: Deployment) -> dict[str, list[set[str]]]:
    """Every stored version of root, snapshot and timestamp verifies; returns, per role
    and stored version, the key IDs that signed it.

    Versions can be missing: notary-server (memory storage) keeps the versions that were
    published or that it generated, and a client publish may skip version numbers.
    """
    keys: dict[str, Any] = {}
    signers: dict[str, list[set[str]]] = {}
    for role in ("root", "snapshot", "timestamp"):
        signers[role] = []
        current, _ = fetch(deployment, role)
        for version in range(1, current["signed"]["version"] + 1):
            text = fetch_version(deployment, role, version)
            if text is None:  # not every version is stored (see the docstring)
                continue
            doc = json.loads(text)
            assert doc["signed"]["version"] == version
            if role == "root":
                keys.update(doc["signed"]["keys"])
            content = signed_bytes(text)
            ids = set()
            for sig in doc["signatures"]:
                assert sig["keyid"] in keys, f"{version}.{role}.json: unknown key {sig['keyid']}"
                algorithm, public = public_of(keys[sig["keyid"]])
                assert nkeys.verify(algorithm, public, base64.b64decode(sig["sig"]), content), (
                    f"{version}.{role}.json: signature by {sig['keyid']} does not verify"
                )
                ids.add(sig["keyid"])
            assert ids, f"{version}.{role}.json is unsigned"
            signers[role].append(ids)
        assert signers[role], f"notary-server served no {role} versions"
    return signers


def notary_keys(daemon: Daemon) -> dict[str, tuple[str, str, str]]:
    """notary key id -> (registry key_id, role, gun), from signerd's state."""
    with sqlite3.connect(daemon.state / "notary.db") as conn:
        rows = conn.execute("SELECT notary_id, key_id, role, gun FROM notary_keys").fetchall()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def registry_object(daemon: Daemon, key_id: str) -> tuple[str, str]:
    with sqlite3.connect(daemon.state / "keys.db") as conn:
        row = conn.execute(
            "SELECT object_id, state FROM keys WHERE key_id = ?", [key_id]
        ).fetchone()
    assert row is not None, f"key {key_id} is not in the registry"
    return row[0], row[1]


def token_object_ids(daemon: Daemon) -> set[str]:
    """Private key object ids on the token, read by signerd's own token layer."""
    code = (
        "import os, sys; from signer.token import Token, TokenSettings\n"
        "t = Token(TokenSettings(module=sys.argv[1], label=sys.argv[2], "
        "pin=os.environ['SIGNER_PIN'], probe_interval=0))\n"
        "t.open()\n"
        "print('\\n'.join(o.object_id for o in t.objects() if o.object_class == 'private'))\n"
        "t.close()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "/usr/lib/softhsm/libsofthsm2.so", daemon.label],
        env=dict(os.environ, **daemon.env),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        cwd=str(Path(__file__).resolve().parent.parent),
    )
    return set(done.stdout.split())


def audit_rows(daemon: Daemon) -> list[tuple[str, str, str, str, str, str]]:
    with sqlite3.connect(daemon.state / "audit.db") as conn:
        return conn.execute(
            "SELECT principal, operation, outcome, key_id, role, repository FROM audit ORDER BY seq"
        ).fetchall()


# -- the test -------------------------------------------------------------------------------


def test_notary_cli_through_notary_server_and_signerd(deployment: Deployment) -> None:
    root = deployment.root
    alice = deployment.cli("trust-alice")
    (root / "hello.txt").write_text("hello from signerd\n")
    (root / "v2.txt").write_text("release two\n")

    alice("init", GUN)
    # The server's timestamp key was made in signerd's token during init.
    alice("add", GUN, "v1", str(root / "hello.txt"))
    alice("publish", GUN)

    # A fresh client with no local trust data sees the target.
    listing = deployment.cli("trust-bob")("list", GUN)
    assert "v1" in listing, listing

    # Delegation: add a key for targets/releases, publish through it.
    key_path, cert_path = delegation_key(root)
    alice("delegation", "add", GUN, "targets/releases", str(cert_path), "--all-paths")
    alice("key", "import", str(key_path), "-r", "targets/releases", "-g", GUN)
    alice("publish", GUN)
    alice("add", GUN, "v2", str(root / "v2.txt"), "--roles", "targets/releases")
    alice("publish", GUN)
    listing = deployment.cli("trust-carol")("list", GUN)
    assert "v2" in listing and "targets/releases" in listing, listing

    before = verify_repository(deployment)
    timestamp_before = before["root"]["signed"]["roles"]["timestamp"]["keyids"]

    # The server rotates its keys; snapshot becomes server-managed (in the token too).
    alice("key", "rotate", GUN, "timestamp", "-r")
    alice("key", "rotate", GUN, "snapshot", "-r")
    (root / "v3.txt").write_text("release three\n")
    alice("add", GUN, "v3", str(root / "v3.txt"))
    alice("publish", GUN)
    listing = deployment.cli("trust-dave")("list", GUN)
    assert "v3" in listing, listing

    docs = verify_repository(deployment)
    roles = docs["root"]["signed"]["roles"]
    timestamp_ids = roles["timestamp"]["keyids"]
    snapshot_ids = roles["snapshot"]["keyids"]
    assert timestamp_ids != timestamp_before, "timestamp key was not rotated"

    # The timestamp and snapshot keys notary-server uses are signerd keys in the token.
    linked = notary_keys(deployment.daemon)
    on_token = token_object_ids(deployment.daemon)
    for role, ids in (("timestamp", timestamp_ids), ("snapshot", snapshot_ids)):
        for notary_id in ids:
            assert notary_id in linked, f"{role} key {notary_id} was not made by signerd"
            assert docs["root"]["signed"]["keys"][notary_id]["keytype"] == deployment.algorithm
            key_id, key_role, gun = linked[notary_id]
            assert (key_role, gun) == (role, GUN)
            object_id, state = registry_object(deployment.daemon, key_id)
            assert state == "active"
            assert object_id in on_token, f"{role} key {notary_id} is not on the token"
        # ... and they signed what the server serves.
        assert {s["keyid"] for s in docs[role]["signatures"]} <= set(ids)
    # notary-server created a timestamp key at init and another at rotation, and a
    # snapshot key at rotation: all through signerd.
    assert {r for _, r, _ in linked.values()} == {"timestamp", "snapshot"}
    assert len(linked) >= 3

    # Every timestamp notary-server ever served, and every snapshot after the rotation,
    # was signed by signerd (and verifies).
    history = verify_history(deployment)
    for ids in history["timestamp"]:
        assert ids <= set(linked), f"a timestamp was signed by keys {ids} not in signerd"
    assert history["snapshot"][-1] <= set(linked)
    assert len(history["timestamp"]) >= 4, history

    # The audit log holds notary-server's requests.
    rows = [r for r in audit_rows(deployment.daemon) if r[0] == NOTARY_SERVER_PRINCIPAL]
    ops = {(op, outcome) for _, op, outcome, *_ in rows}
    assert ("create", "allowed") in ops, rows
    assert ("sign", "allowed") in ops, rows
    assert ("read", "allowed") in ops, rows
    signed_keys = {key_id for _, op, outcome, key_id, _, _ in rows if op == "sign"}
    assert signed_keys <= {v[0] for v in linked.values()}
    assert all(repo == GUN for *_, repo in rows if repo), rows
    # Nothing notary-server did was refused or failed.
    assert not [r for r in rows if r[2] != "allowed"], rows
