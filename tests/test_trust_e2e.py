"""End to end: ``signer-trust`` runs Docker Content Trust with every key in signerd's token.

Real parts only: signerd (SoftHSM token, mTLS), Debian's notary-server (memory storage)
using signerd as its signer, Debian's docker-registry with images pushed by skopeo, and
the real notary CLI (and docker CLI, where installed) reading what we publish.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from notary_harness import (
    NOTARY_SERVER_PRINCIPAL,
    PASSPHRASES,
    NotaryCLI,
    NotaryServer,
    delegation_key,
    require,
    start_notary_server,
    stop_notary_server,
)
from registry_harness import PushedImage, Registry, push_image, start_registry

from harness import Daemon, running_daemon

BUILD_FARM = "ci"  # a build farm's principal: signs releases and targets/ci only

POLICY = f"""
[[rules]]
principals = ["{NOTARY_SERVER_PRINCIPAL}"]
operations = ["create", "sign", "read"]
keys = {{ roles = ["timestamp", "snapshot"], repositories = ["*"] }}

[[rules]]
principals = ["admin"]
operations = ["create", "read", "sign", "certify", "retire", "audit"]
keys = {{ roles = ["root", "targets", "snapshot", "targets/*"], repositories = ["*"] }}

[[rules]]
principals = ["admin"]
operations = ["read", "audit"]
keys = {{ roles = ["*"], repositories = ["*"] }}

# the build farm: only targets/releases and its own targets/ci, never root or targets
[[rules]]
principals = ["{BUILD_FARM}"]
operations = ["read", "sign"]
keys = {{ roles = ["targets/releases", "targets/ci"], repositories = ["*"] }}

# root ceremonies: two approvers out of three people
[[rules]]
principals = ["alice", "bob"]
operations = ["read", "approve"]
keys = {{ roles = ["root"], repositories = ["*"] }}

[quorum]
approvals = 2
"""


@dataclass
class Stack:
    root: Path
    daemon: Daemon
    server: NotaryServer
    registry: Registry

    def logs(self) -> str:
        return (
            f"--- signerd log (tail)\n{self.daemon.log()[-4000:]}\n"
            f"--- notary-server log (tail)\n{self.server.log()[-4000:]}"
        )

    def client_config(self, principal: str) -> Path:
        config = self.daemon.client_config(principal)
        path = self.root / f"signer-client-{principal}.toml"
        path.write_text(
            f'address = "{config.address}"\nca = "{config.ca}"\n'
            f'cert = "{config.cert}"\nkey = "{config.key}"\n'
        )
        return path

    def trust(
        self,
        *args: str,
        principal: str = "admin",
        trust_dir: str = "trust-admin",
        ok: bool = True,
        server: str = "",
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        cmd = [
            sys.executable,
            "-m",
            "signer_client.trust.cli",
            "-s",
            server or self.server.url,
            "--tlscacert",
            str(self.daemon.pki / "ca.pem"),
            "-d",
            str(self.root / trust_dir),
            "--signer-config",
            str(self.client_config(principal)),
            "--registry-plain-http",
            *args,
        ]
        done = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env=dict(os.environ, **(env or {})),
        )
        if ok and done.returncode != 0:
            pytest.fail(
                f"`signer-trust {' '.join(args)}` failed ({done.returncode}):\n"
                f"--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}\n{self.logs()}",
                pytrace=False,
            )
        return done

    def notary(self, trust_dir: str) -> NotaryCLI:
        return NotaryCLI(self.server, self.root / trust_dir, self.daemon.pki / "ca.pem", self.logs)

    def gun(self, repository: str) -> str:
        return f"{self.registry.host}/{repository}"

    def push(self, repository: str, tag: str, **kwargs: Any) -> PushedImage:
        return push_image(self.registry, repository, tag, **kwargs)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require("notary-server")
    require("notary")
    root = tmp_path_factory.mktemp("trust")
    with running_daemon(
        root / "signerd",
        clients=["admin", NOTARY_SERVER_PRINCIPAL, BUILD_FARM, "alice", "bob"],
        policy=POLICY,
    ) as daemon:
        server = start_notary_server(root, daemon, "ecdsa")
        registry = start_registry(root / "registry")
        try:
            yield Stack(root, daemon, server, registry)
        finally:
            registry.stop()
            stop_notary_server(server)


def notary_targets(cli: NotaryCLI, gun: str, *extra: str) -> dict[str, tuple[str, int, str]]:
    """``notary list``: {tag: (hex digest, size, role)}."""
    rows: dict[str, tuple[str, int, str]] = {}
    for line in cli("list", gun, *extra).splitlines():
        parts = line.split()
        if len(parts) == 4 and len(parts[1]) == 64 and parts[2].isdigit():
            rows[parts[0]] = (parts[1], int(parts[2]), parts[3])
    return rows


def test_build_farm_flow_read_by_notary_cli(stack: Stack) -> None:
    gun = stack.gun("team/app")
    image = stack.push("team/app", "1.0")
    stack.trust("init", gun)
    stack.trust("signer", "add", BUILD_FARM, gun, "--create-key")
    done = stack.trust("sign", f"{gun}:1.0", principal=BUILD_FARM, trust_dir="trust-ci")
    assert "targets/releases" in done.stdout and "targets/ci" in done.stdout

    digest = image.digest.removeprefix("sha256:")
    rows = notary_targets(stack.notary("fresh"), gun)
    assert rows["1.0"][:2] == (digest, image.size)
    assert rows["1.0"][2] in ("targets/releases", "targets/ci")

    inspect = json.loads(stack.trust("inspect", gun).stdout)
    assert inspect[0]["SignedTags"] == [
        {"SignedTag": "1.0", "Digest": digest, "Signers": [BUILD_FARM]}
    ]

    # a multi-arch OCI index signs by the index's own digest and size
    index = stack.push("team/app", "multi", index=True)
    stack.trust("sign", f"{gun}:multi", principal=BUILD_FARM, trust_dir="trust-ci")
    rows = notary_targets(stack.notary("fresh-2"), gun)
    assert rows["multi"][:2] == (index.digest.removeprefix("sha256:"), index.size)

    pretty = stack.trust("inspect", gun, "--pretty").stdout
    assert f"Signatures for {gun}" in pretty and "Administrative keys" in pretty
    assert any(line.split()[:3] == ["1.0", digest, BUILD_FARM] for line in pretty.splitlines())


# -- helpers -----------------------------------------------------------------------------


def fails(done: subprocess.CompletedProcess[str], *words: str) -> str:
    """A refusal: exit 1, one line on stderr naming the problem, no traceback."""
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("signer-trust: error: "), done.stderr
    assert "Traceback" not in done.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def served(stack: Stack, gun: str, role: str) -> dict[str, Any]:
    from notary_harness import https_get

    with https_get(stack.server, f"/v2/{gun}/_trust/tuf/{role}.json") as resp:
        return dict(json.loads(resp.read()))


def version_of(stack: Stack, gun: str, role: str) -> int:
    return int(served(stack, gun, role)["signed"]["version"])


def inspect(stack: Stack, gun: str, trust_dir: str = "trust-admin") -> dict[str, Any]:
    return dict(json.loads(stack.trust("inspect", gun, trust_dir=trust_dir).stdout)[0])


def root_cert_id(stack: Stack, gun: str) -> str:
    keys = inspect(stack, gun)["AdministrativeKeys"]
    (root,) = [k for k in keys if k["Name"] == "Root"]
    return str(root["Keys"][0]["ID"])


def assert_no_private_keys(*directories: Path) -> None:
    for directory in directories:
        for path in directory.rglob("*"):
            if path.is_file():
                assert b"PRIVATE KEY" not in path.read_bytes(), f"a private key in {path}"


# -- pinning, docker, interop ------------------------------------------------------------


def test_notary_cli_with_trust_pinning_to_our_root_certificate(stack: Stack) -> None:
    gun = stack.gun("pinned/app")
    image = stack.push("pinned/app", "2.0")
    stack.trust("init", gun)
    stack.trust("sign", f"{gun}:2.0")
    cert_id = root_cert_id(stack, gun)

    pinned = stack.root / "notary-pinned.json"
    pinned.write_text(json.dumps({"trust_pinning": {"certs": {gun: [cert_id]}}}))
    rows = notary_targets(stack.notary("pinned"), gun, "-c", str(pinned))
    assert rows["2.0"][:2] == (image.digest.removeprefix("sha256:"), image.size)

    # Pinned to another certificate ID, the notary CLI refuses our repository.
    wrong = stack.root / "notary-wrong-pin.json"
    wrong.write_text(json.dumps({"trust_pinning": {"certs": {gun: ["0" * 64]}}}))
    with pytest.raises(pytest.fail.Exception):
        stack.notary("wrong-pin")("list", gun, "-c", str(wrong))


def test_docker_trust_inspect_reads_our_repository(stack: Stack) -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker CLI on this machine")
    gun = stack.gun("docker/app")
    image = stack.push("docker/app", "3.0")
    stack.trust("init", gun)
    stack.trust("signer", "add", BUILD_FARM, gun, "--create-key")
    stack.trust("sign", f"{gun}:3.0", principal=BUILD_FARM, trust_dir="trust-ci")

    config = stack.root / "docker-config"
    host = stack.server.url.removeprefix("https://")
    (config / "tls" / host).mkdir(parents=True, exist_ok=True)
    shutil.copy(stack.daemon.pki / "ca.pem", config / "tls" / host / "ca.crt")
    env = dict(os.environ, DOCKER_CONFIG=str(config), DOCKER_CONTENT_TRUST_SERVER=stack.server.url)
    done = subprocess.run(
        [docker, "trust", "inspect", gun], env=env, capture_output=True, text=True, timeout=60
    )
    if done.returncode != 0 and "is not a docker command" in done.stderr:
        pytest.skip("this docker CLI has no `docker trust`")
    assert done.returncode == 0, done.stderr
    theirs = json.loads(done.stdout)[0]
    ours = inspect(stack, gun)
    assert theirs["SignedTags"] == [
        {"SignedTag": "3.0", "Digest": image.digest.removeprefix("sha256:"), "Signers": ["ci"]}
    ]
    assert theirs["SignedTags"] == ours["SignedTags"]
    assert theirs["Signers"] == ours["Signers"]
    assert theirs["AdministrativeKeys"] == ours["AdministrativeKeys"]


def test_outside_contributor_publishes_with_notary_cli_and_we_publish_after(stack: Stack) -> None:
    gun = stack.gun("interop/app")
    stack.push("interop/app", "ours-1")
    stack.push("interop/app", "ours-2")
    stack.trust("init", gun)
    stack.trust("signer", "add", BUILD_FARM, gun, "--create-key")
    key_path, cert_path = delegation_key(stack.root / "bob-keys", "bob")
    stack.trust("signer", "add", "bob", gun, "--key", str(cert_path))
    stack.trust("sign", f"{gun}:ours-1", principal=BUILD_FARM, trust_dir="trust-ci")

    # bob, with the real notary CLI and his own key, publishes into his roles
    bob = stack.notary("trust-bob")
    bob("key", "import", str(key_path), "-r", "targets/bob", "-g", gun)
    (stack.root / "bob.txt").write_text("bob's release\n")
    bob("add", gun, "bob-1", str(stack.root / "bob.txt"), "--roles", "targets/releases")
    bob("add", gun, "bob-1", str(stack.root / "bob.txt"), "--roles", "targets/bob")
    bob("publish", gun)

    info = inspect(stack, gun)
    tags = {t["SignedTag"]: t["Signers"] for t in info["SignedTags"]}
    assert tags == {"bob-1": ["bob"], "ours-1": ["ci"]}
    assert {s["Name"] for s in info["Signers"]} == {"bob", "ci"}

    # we publish after him; his delegation and his tag stay intact and verify
    stack.trust("sign", f"{gun}:ours-2", principal=BUILD_FARM, trust_dir="trust-ci")
    rows = notary_targets(stack.notary("interop-fresh"), gun)
    assert set(rows) == {"bob-1", "ours-1", "ours-2"}
    bob_role = served(stack, gun, "targets/bob")["signed"]["targets"]
    assert set(bob_role) == {"bob-1"}
    assert_no_private_keys(stack.root / "trust-admin", stack.root / "trust-ci")


# -- revoke, signers, rotation, delete ---------------------------------------------------


def test_revoke_and_signer_remove(stack: Stack) -> None:
    gun = stack.gun("revoke/app")
    for tag in ("1", "2"):
        stack.push("revoke/app", tag)
    stack.trust("init", gun)
    stack.trust("signer", "add", BUILD_FARM, gun, "--create-key")
    # carol brings a bare public key ("PUBLIC KEY" PEM, as `docker trust key generate`)
    from cryptography.hazmat.primitives import serialization

    key_path, _ = delegation_key(stack.root / "carol-keys", "carol")
    private = serialization.load_pem_private_key(key_path.read_bytes(), None)
    public_path = stack.root / "carol-keys" / "carol.pub"
    public_path.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    stack.trust("signer", "add", "carol", gun, "--key", str(public_path))
    delegation_keys = served(stack, gun, "targets")["signed"]["delegations"]["keys"]
    assert {k["keytype"] for k in delegation_keys.values()} == {"ecdsa"}
    stack.trust("sign", f"{gun}:1", f"{gun}:2", principal=BUILD_FARM, trust_dir="trust-ci")
    assert set(notary_targets(stack.notary("revoke-1"), gun)) == {"1", "2"}

    stack.trust("revoke", f"{gun}:1", principal=BUILD_FARM, trust_dir="trust-ci")
    assert set(notary_targets(stack.notary("revoke-2"), gun)) == {"2"}
    assert [t["SignedTag"] for t in inspect(stack, gun)["SignedTags"]] == ["2"]

    stack.trust("signer", "remove", "carol", gun)
    info = inspect(stack, gun)
    assert [s["Name"] for s in info["Signers"]] == ["ci"]
    targets = served(stack, gun, "targets")["signed"]["delegations"]
    assert {r["name"] for r in targets["roles"]} == {"targets/ci", "targets/releases"}
    (releases,) = [r for r in targets["roles"] if r["name"] == "targets/releases"]
    ci_ids = next(r for r in targets["roles"] if r["name"] == "targets/ci")["keyids"]
    assert releases["keyids"] == ci_ids  # carol's key is gone from releases too

    # ci is now the last releases signer: removing it needs --force
    fails(stack.trust("signer", "remove", "ci", gun, ok=False), "last signer", "--force")
    assert set(notary_targets(stack.notary("revoke-3"), gun)) == {"2"}


def test_rotate_every_role_and_a_notary_client_follows(stack: Stack) -> None:
    gun = stack.gun("rotate/app")
    stack.push("rotate/app", "before")
    stack.push("rotate/app", "after")
    stack.trust("init", gun)
    stack.trust("sign", f"{gun}:before")
    follower = stack.notary("follower")
    assert set(notary_targets(follower, gun)) == {"before"}  # trusts root v1 from now on
    first_root = served(stack, gun, "root")["signed"]

    for role, extra in (
        ("targets", ()),
        ("timestamp", ()),
        ("snapshot", ("--local",)),  # into the token
        ("snapshot", ("-r",)),  # back to notary-server
        ("root", ()),
    ):
        before = served(stack, gun, "root")["signed"]
        stack.trust("key", "rotate", role, gun, *extra)
        after = served(stack, gun, "root")
        assert after["signed"]["version"] == before["version"] + 1
        assert after["signed"]["roles"][role]["keyids"] != before["roles"][role]["keyids"]
        if role == "root":  # signed by the old root key and the new one
            signers = {s["keyid"] for s in after["signatures"]}
            assert set(before["roles"]["root"]["keyids"]) <= signers
            assert set(after["signed"]["roles"]["root"]["keyids"]) <= signers
        assert set(notary_targets(follower, gun)) == {"before"}, role

    stack.trust("sign", f"{gun}:after")
    assert set(notary_targets(follower, gun)) == {"before", "after"}
    assert set(notary_targets(stack.notary("rotate-fresh"), gun)) == {"before", "after"}
    final = served(stack, gun, "root")["signed"]
    for role in ("root", "targets", "snapshot", "timestamp"):
        assert set(final["roles"][role]["keyids"]).isdisjoint(first_root["roles"][role]["keyids"])
    # the old daemon keys of root and targets are retired, the new ones active
    keys = stack.daemon.client().list_keys(repository=gun)
    states = {(k.role, k.state) for k in keys}
    assert ("root", 2) in states and ("root", 1) in states  # RETIRED, ACTIVE
    assert ("targets", 2) in states and ("targets", 1) in states


def test_local_snapshot_init_and_delete_remote(stack: Stack) -> None:
    gun = stack.gun("local/app")
    stack.push("local/app", "1")
    stack.trust("init", gun, "--local-snapshot")
    stack.trust("sign", f"{gun}:1")
    snapshot_ids = served(stack, gun, "root")["signed"]["roles"]["snapshot"]["keyids"]
    ours = {k.notary_key_id for k in stack.daemon.client().list_keys(repository=gun)}
    assert set(snapshot_ids) <= ours  # the snapshot key is in the token
    assert set(notary_targets(stack.notary("local-1"), gun)) == {"1"}

    stack.trust("delete", gun, "--remote")
    fails(stack.trust("inspect", gun, ok=False), "not a trusted repository")
    fails(stack.trust("sign", f"{gun}:1", ok=False), "not a trusted repository")
    # and it can be set up again from scratch
    stack.trust("init", gun)
    stack.trust("sign", f"{gun}:1")
    assert set(notary_targets(stack.notary("local-2"), gun)) == {"1"}


# -- custody: keys in the token, every signature audited ---------------------------------


def test_every_client_key_is_a_token_object_and_every_signature_is_audited(stack: Stack) -> None:
    import hashlib

    from harness import audit_rows, object_id_of, read_token_objects
    from signer_client.trust import canonical

    gun = stack.gun("custody/app")
    stack.push("custody/app", "1")
    stack.trust("init", gun)
    stack.trust("signer", "add", BUILD_FARM, gun, "--create-key")
    stack.trust("sign", f"{gun}:1", principal=BUILD_FARM, trust_dir="trust-ci")

    keys = [k for k in stack.daemon.client().list_keys(repository=gun) if k.state == 1]
    roles = {k.role for k in keys}
    assert {"root", "targets", "targets/ci"} <= roles
    objects = {o["id"]: o for o in read_token_objects(stack.daemon) if o["class"] == "private"}
    for key in keys:
        obj = objects[object_id_of(stack.daemon, key.key_id)]
        assert obj["sensitive"] is True and obj["extractable"] is False, (key.role, obj)
        assert obj["always_sensitive"] is True and obj["never_extractable"] is True
    assert_no_private_keys(stack.root / "trust-admin", stack.root / "trust-ci")

    # every signature on what notary-server serves, by a key of ours, was audited with
    # the exact payload hash
    by_notary_id = {}
    for key in keys:
        by_notary_id[key.notary_key_id] = key.key_id
        if key.certificate_key_id:
            by_notary_id[key.certificate_key_id] = key.key_id
    audited = {
        (r["key_id"], r["payload_sha256"])
        for r in audit_rows(stack.daemon, "operation = 'sign' AND outcome = 'allowed'")
    }
    checked = 0
    for role in ("root", "targets", "snapshot", "timestamp", "targets/releases", "targets/ci"):
        doc = served(stack, gun, role)
        digest = hashlib.sha256(canonical.encode(doc["signed"])).hexdigest()
        for sig in doc["signatures"]:
            key_id = by_notary_id.get(sig["keyid"])
            assert key_id is not None, f"{role} signed by {sig['keyid']}, not a daemon key"
            assert (key_id, digest) in audited, f"{role}: signature not in the audit log"
            checked += 1
    assert checked == 6


# -- bad input and faults: one line, nothing half-published -------------------------------


def snapshot_state(stack: Stack, gun: str) -> dict[str, int]:
    return {r: version_of(stack, gun, r) for r in ("root", "targets", "targets/releases")}


def test_bad_input_and_faults_are_one_line_and_publish_nothing(stack: Stack) -> None:
    gun = stack.gun("faults/app")
    stack.push("faults/app", "1")
    stack.trust("init", gun)
    stack.trust("signer", "add", BUILD_FARM, gun, "--create-key")
    stack.trust("sign", f"{gun}:1", principal=BUILD_FARM, trust_dir="trust-ci")
    before = snapshot_state(stack, gun)
    keys_before = len(stack.daemon.client().list_keys(repository=gun))
    ci = {"principal": BUILD_FARM, "trust_dir": "trust-ci", "ok": False}

    unknown = stack.gun("never/initialised")
    fails(
        stack.trust("sign", f"{unknown}:1", "--digest", "sha256:" + "a" * 64, "--size", "10", **ci),
        "not a trusted repository",
    )
    fails(stack.trust("sign", "Bad//Reference:1", **ci), "Bad//Reference")
    fails(stack.trust("sign", gun, **ci), "tag")
    fails(stack.trust("sign", f"{gun}:missing", **ci), "missing")  # registry 404
    fails(stack.trust("sign", f"{gun}:1", "--digest", "sha256:xyz", "--size", "1", **ci))
    down = "https://127.0.0.1:9"  # nothing listens on the discard port
    fails(stack.trust("inspect", gun, server=down, ok=False), "127.0.0.1:9")
    fails(stack.trust("sign", f"{gun}:1", server=down, **ci), "127.0.0.1:9")

    # a registry that wants a token: no credentials -> one line naming the registry
    locked = start_registry(stack.root / "locked-registry", auth="token")
    try:
        push_image(locked, "faults/app", "1")
        fails(stack.trust("sign", f"{locked.host}/faults/app:1", **ci), locked.host)
    finally:
        locked.stop()

    # policy denials: the build farm may not add signers, rotate keys or touch root
    fails(stack.trust("signer", "add", "mallory", gun, "--create-key", **ci), "no key of targets")
    fails(stack.trust("key", "rotate", "targets", gun, **ci), "no key of root")
    fails(stack.trust("init", stack.gun("faults/other"), **ci), "PERMISSION_DENIED")

    assert snapshot_state(stack, gun) == before
    assert len(stack.daemon.client().list_keys(repository=gun)) == keys_before
    assert stack.daemon.health() == 1  # SERVING


def test_concurrent_publish_is_refused_whole_and_the_retry_succeeds(stack: Stack) -> None:
    """bob (notary CLI, his own key) publishes targets/releases just before our POST of
    the same role: notary-server refuses ours whole (409-style VERSION), the retry wins."""
    from signer_client.trust.keys import DaemonKeys
    from signer_client.trust.notary_server import ConflictError, NotaryServerClient
    from signer_client.trust.repo import TagToSign, TrustRepository
    from signer_client.trust.state import TrustDir

    gun = stack.gun("race/app")
    stack.trust("init", gun)
    stack.trust("signer", "add", BUILD_FARM, gun, "--create-key")
    key_path, cert_path = delegation_key(stack.root / "race-bob", "bob")
    stack.trust("signer", "add", "bob", gun, "--key", str(cert_path))
    bob = stack.notary("race-bob-trust")
    bob("key", "import", str(key_path), "-r", "targets/bob", "-g", gun)
    (stack.root / "theirs.txt").write_text("bob's\n")

    class RacedServer(NotaryServerClient):
        """notary-server, with bob publishing just before our POST."""

        raced = False

        def publish(self, gun_: str, files: Any) -> None:
            if not self.raced:
                self.raced = True
                bob("add", gun, "theirs", str(stack.root / "theirs.txt"), "-r", "targets/releases")
                bob("publish", gun)
            super().publish(gun_, files)

    server = RacedServer(stack.server.url, ca_file=stack.daemon.pki / "ca.pem")
    keys = DaemonKeys(stack.daemon.client(BUILD_FARM), gun)
    repo = TrustRepository(gun, server, keys, TrustDir(stack.root / "trust-race"))
    tag = TagToSign("ours", bytes.fromhex("b" * 64), 1234)
    with pytest.raises(ConflictError) as refused:
        repo.sign([tag], signer=BUILD_FARM)
    assert "\n" not in str(refused.value)
    assert set(notary_targets(stack.notary("race-1"), gun)) == {"theirs"}
    with pytest.raises(urllib.error.HTTPError):  # targets/ci was never published
        served(stack, gun, "targets/ci")

    repo.sign([tag], signer=BUILD_FARM)  # reloads, signs the next version
    assert set(notary_targets(stack.notary("race-2"), gun)) == {"theirs", "ours"}


# -- root ceremonies ---------------------------------------------------------------------


def request_ids(output: str) -> list[str]:
    return [line.split()[1] for line in output.splitlines() if line.strip().startswith("request ")]


def approve_all(stack: Stack, ids: list[str]) -> None:
    for request_id in ids:
        request = stack.daemon.client("alice").get_signature_request(request_id)
        for approver in ("alice", "bob"):
            stack.daemon.client(approver).approve(request_id, request.payload_sha256)


def test_quorum_root_init_and_rotation(stack: Stack) -> None:
    gun = stack.gun("quorum/app")
    stack.push("quorum/app", "1")
    waiting = stack.trust("init", gun, "--quorum", ok=False)
    assert waiting.returncode == 3, waiting.stderr
    ids = request_ids(waiting.stdout)
    assert len(ids) == 1 and "ceremony finish" in waiting.stdout
    with pytest.raises(pytest.fail.Exception):  # nothing was published yet
        stack.notary("quorum-0")("list", gun)

    still = stack.trust("ceremony", "finish", gun, ok=False)
    assert still.returncode == 3 and "0 of 2" in still.stdout
    approve_all(stack, ids)
    stack.trust("ceremony", "finish", gun)
    stack.trust("sign", f"{gun}:1")
    follower = stack.notary("quorum-follower")
    assert set(notary_targets(follower, gun)) == {"1"}

    # rotating a quorum root: a new quorum key; old and new both need their approvals
    waiting = stack.trust("key", "rotate", "root", gun, ok=False)
    assert waiting.returncode == 3, waiting.stderr
    ids = request_ids(waiting.stdout)
    assert len(ids) == 2
    assert version_of(stack, gun, "root") == 1
    approve_all(stack, ids)
    stack.trust("ceremony", "finish", gun)
    assert version_of(stack, gun, "root") == 2
    assert set(notary_targets(follower, gun)) == {"1"}  # the old client follows


# -- migrating a repository made with the notary CLI -------------------------------------


def test_migrate_a_notary_cli_repository_into_the_token(stack: Stack) -> None:
    gun = stack.gun("legacy/app")
    owner = stack.notary("legacy-owner")
    (stack.root / "old.txt").write_text("made with local keys\n")
    owner("init", gun)
    owner("key", "rotate", gun, "snapshot", "-r")  # step 1: snapshot to notary-server
    owner("add", gun, "old", str(stack.root / "old.txt"))
    owner("publish", gun)
    follower = stack.notary("legacy-follower")
    assert set(notary_targets(follower, gun)) == {"old"}
    first = served(stack, gun, "root")["signed"]

    private = stack.root / "legacy-owner" / "private"
    (root_file,) = [p for p in private.rglob("*.key") if b"role: root" in p.read_bytes()]
    wrong = stack.trust(
        "key", "rotate", "root", gun, "--old-root-key", str(root_file),
        env={"NOTARY_ROOT_PASSPHRASE": "not it"}, ok=False,
    )  # fmt: skip
    fails(wrong, "passphrase")
    assert version_of(stack, gun, "root") == first["version"]

    # step 2: root into the token, signed once by the old key file; step 3: targets
    stack.trust(
        "key", "rotate", "root", gun, "--old-root-key", str(root_file),
        env={"NOTARY_ROOT_PASSPHRASE": PASSPHRASES["NOTARY_ROOT_PASSPHRASE"]},
    )  # fmt: skip
    stack.trust("key", "rotate", "targets", gun)
    stack.push("legacy/app", "new")
    stack.trust("sign", f"{gun}:new")

    assert set(notary_targets(follower, gun)) == {"old", "new"}  # the old client follows
    root = served(stack, gun, "root")["signed"]
    ours = {k.notary_key_id for k in stack.daemon.client().list_keys(repository=gun)}
    ours |= {k.certificate_key_id for k in stack.daemon.client().list_keys(repository=gun)}
    for role in ("root", "targets"):
        assert set(root["roles"][role]["keyids"]) <= ours, role
        assert set(root["roles"][role]["keyids"]).isdisjoint(first["roles"][role]["keyids"])
