"""Who may do what: the policy file, deny by default, rate limits, reload on SIGHUP."""

from __future__ import annotations

import hashlib
import signal
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from authz_helpers import audit_rows, sha256, tuf_payload, verify, wait_for

from harness import Daemon, running_daemon
from signer.errors import ConfigError, PermissionDenied, ResourceExhausted
from signer.identity import Principal
from signer.policy import AllOf, AnyOf, DenyAll, Operation, Resource
from signer.policy.file import FilePolicy
from signer.storage.buckets import MemoryBuckets
from signer_client import ClientError

RELEASE_BOT = "spiffe://example.org/release-bot"
NOTARY = "notary-server.example.org"

POLICY = f"""
[groups]
release = ["{RELEASE_BOT}", "alice"]
admins = ["admin"]

[[rules]]
principals = ["group:admins"]
operations = ["create", "read", "retire", "destroy"]

[[rules]]
principals = ["group:release", "{NOTARY}"]
operations = ["sign", "read"]
keys = {{ roles = ["targets", "targets/*"], repositories = ["docker.io/*"] }}

[[rules]]
principals = ["raw-signer"]
operations = ["sign-raw"]
keys = {{ roles = ["targets"] }}

[[rules]]
principals = ["limited", "spiffe://example.org/build/*"]
operations = ["sign"]

[rate_limits]
limited = {{ rate = 0.2, burst = 3 }}
"""

CLIENTS = ["admin", "alice", RELEASE_BOT, NOTARY, "raw-signer", "bob", "limited"]


def _principal(name: str) -> Principal:
    return Principal(name, "cn", "0" * 64)


# -- the policy objects, without a daemon -------------------------------------------------


def test_rules_grant_by_name_group_glob_and_deny_by_default() -> None:
    policy = FilePolicy.parse(POLICY)
    targets = Resource("k1", "targets", "docker.io/library/alpine")
    policy.authorize(_principal("alice"), Operation.SIGN, targets)
    policy.authorize(_principal(RELEASE_BOT), Operation.SIGN, targets)
    policy.authorize(_principal(NOTARY), Operation.READ, targets)
    policy.authorize(
        _principal("alice"), Operation.SIGN, Resource("k", "targets/releases", "docker.io/x")
    )
    policy.authorize(_principal("spiffe://example.org/build/7"), Operation.SIGN, targets)
    denied = [
        ("alice", Operation.SIGN, Resource("k1", "targets", "quay.io/x")),  # repository
        ("alice", Operation.SIGN, Resource("k1", "root", "docker.io/x")),  # role
        ("alice", Operation.SIGN_RAW, targets),  # raw is its own permission
        ("alice", Operation.CREATE, Resource("", "targets", "docker.io/x")),
        ("admin", Operation.SIGN, targets),  # administration does not include signing
        ("bob", Operation.READ, targets),  # unknown principal
        ("spiffe://example.org/build", Operation.SIGN, targets),  # glob needs the /
    ]
    for who, op, resource in denied:
        with pytest.raises(PermissionDenied) as info:
            policy.authorize(_principal(who), op, resource)
        assert who in info.value.message and f"'{op}'" in info.value.message


def test_the_guide_policy_is_valid() -> None:
    """docs/policy.md's build-farm policy loads and means what the guide says."""
    guide = (Path(__file__).parent.parent / "docs" / "policy.md").read_text()
    text = guide.split("```toml\n", 1)[1].split("```", 1)[0]
    policy = FilePolicy.parse(text, "docs/policy.md")
    runner = _principal("spiffe://example.org/build/runner-1")
    policy.authorize(runner, Operation.SIGN, Resource("k", "targets/web", "docker.io/acme/web"))
    with pytest.raises(PermissionDenied):
        policy.authorize(runner, Operation.SIGN, Resource("k", "targets", "docker.io/acme/web"))
    with pytest.raises(PermissionDenied):
        policy.authorize(_principal("ops-1"), Operation.SIGN, Resource("k", "root"))
    policy.authorize(_principal("carol"), Operation.APPROVE, Resource("k", "root"))
    assert policy.quorum.approvals == 2 and policy.tuf.max_expiry_days["timestamp"] == 1
    with pytest.raises(ResourceExhausted):
        policy.rate_limiter.take(_principal("anyone"), 21)


def test_empty_policy_denies_everything() -> None:
    with pytest.raises(PermissionDenied):
        FilePolicy.parse("").authorize(_principal("admin"), Operation.READ, Resource("k"))


def test_policies_compose() -> None:
    allow = FilePolicy.parse(POLICY)
    resource = Resource("k1", "targets", "docker.io/x")
    AnyOf((DenyAll(), allow)).authorize(_principal("alice"), Operation.SIGN, resource)
    with pytest.raises(PermissionDenied):
        AllOf((allow, DenyAll())).authorize(_principal("alice"), Operation.SIGN, resource)


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ('[[rules]]\nprincipals = ["a"]\noperations = ["sing"]', "unknown operation(s) ['sing']"),
        (
            '[[rules]]\nprincipals = ["group:nope"]\noperations = ["read"]',
            "not defined in [groups]",
        ),
        ('[[rules]]\nprincipals = []\noperations = ["read"]', "principals is required"),
        ("[rulez]\n", "unknown section(s) ['rulez']"),
        ('[[rules]]\nprincipals = ["a"]\noperations = ["read"]\nkeys = { role = ["x"] }', "role"),
        ("[rate_limits]\na = { rate = 0 }", "rate must be > 0"),
        ('[rate_limits]\n"dns:" = { rate = 1 }', "names a source (dns:) but no principal"),
        ("[tuf]\nmax_expiry_days = { root = -1 }", "must be > 0"),
        ("[quorum]\napprovals = 0", "integer >= 1"),
        ("[[rules]\n", "not valid TOML"),
    ],
)
def test_bad_policy_files_are_explained(text: str, complaint: str) -> None:
    with pytest.raises(ConfigError) as info:
        FilePolicy.parse(text, "policy.toml")
    assert complaint in str(info.value) and "policy.toml" in str(info.value)


def test_rate_limiter_token_bucket() -> None:
    now = [1000.0]  # an injected clock: no sleeping
    policy = FilePolicy.parse(
        '[groups]\nfarm = ["a", "b"]\n[rate_limits]\n"group:farm" = { rate = 10.0, burst = 2 }\n',
        buckets=MemoryBuckets(clock=lambda: now[0]),
    )
    limiter = policy.rate_limiter
    a, b = _principal("a"), _principal("b")
    limiter.take(a)
    limiter.take(a)
    with pytest.raises(ResourceExhausted, match=r"rate limit for a: 10/s, burst 2; retry in"):
        limiter.take(a)
    limiter.take(b, 2)  # each principal has its own bucket
    limiter.take(_principal("unlisted"), 1000)  # no entry, no "*": unlimited
    with pytest.raises(ResourceExhausted):
        limiter.take(a)  # no time has passed: still empty
    now[0] += 0.12
    limiter.take(a)  # refilled at 10/s
    with pytest.raises(ResourceExhausted, match="exceed the burst"):
        limiter.take(b, 3)


SOURCED_LIMITS = """
[groups]
ops = ["cn:carol", "dns:dave", "erin"]

[rate_limits]
"dns:admin" = { rate = 1.0, burst = 1 }
bare = { rate = 1.0, burst = 2 }
"group:ops" = { rate = 1.0, burst = 3 }
"cn:both" = { rate = 1.0, burst = 4 }
both = { rate = 1.0, burst = 5 }
"cn:dns:odd" = { rate = 1.0, burst = 6 }
"*" = { rate = 1.0, burst = 100 }
"""


def _burst(policy: FilePolicy, name: str, source: str) -> str:
    """The burst of the limit that applies to (name, source), spending no token: a
    request larger than any burst is refused naming it."""
    with pytest.raises(ResourceExhausted) as info:
        policy.rate_limiter.take(Principal(name, source, "0" * 64), 10**6)
    return str(info.value.metadata["burst"])


def test_rate_limit_selectors_honour_the_source() -> None:
    """Prefixed entries and group members mean for rate limits what they mean in rules."""
    policy = FilePolicy.parse(SOURCED_LIMITS, "policy.toml")
    assert _burst(policy, "admin", "dns") == "1"
    assert _burst(policy, "admin", "cn") == "100"  # a CN admin is not the DNS SAN admin
    assert _burst(policy, "admin", "uri") == "100"
    for source in ("uri", "dns", "cn"):  # bare: today's meaning, any source
        assert _burst(policy, "bare", source) == "2"
        assert _burst(policy, "erin", source) == "3"  # a bare group member, likewise
    assert _burst(policy, "carol", "cn") == "3"  # the group's limit, not "*"
    assert _burst(policy, "carol", "dns") == "100"
    assert _burst(policy, "dave", "dns") == "3"
    assert _burst(policy, "dave", "cn") == "100"
    assert _burst(policy, "both", "cn") == "4"  # the prefixed entry before the bare one
    assert _burst(policy, "both", "dns") == "5"
    assert _burst(policy, "dns:admin", "cn") == "100"  # a CN "dns:admin" is not "dns:admin"
    assert _burst(policy, "dns:odd", "cn") == "6"  # ... it is written "cn:dns:odd"


def test_one_bucket_per_source_and_name() -> None:
    """A CN admin spending its bucket leaves the DNS SAN admin's full (and the other way)."""
    policy = FilePolicy.parse("[rate_limits]\nadmin = { rate = 0.001, burst = 2 }\n")
    cn, dns = Principal("admin", "cn", "1" * 64), Principal("admin", "dns", "2" * 64)
    policy.rate_limiter.take(cn, 2)
    with pytest.raises(ResourceExhausted, match="rate limit for admin"):
        policy.rate_limiter.take(cn)
    policy.rate_limiter.take(dns, 2)  # a bucket of its own
    with pytest.raises(ResourceExhausted):
        policy.rate_limiter.take(dns)
    # The same certificate name from another certificate is the same principal: one bucket.
    with pytest.raises(ResourceExhausted):
        policy.rate_limiter.take(Principal("admin", "cn", "3" * 64))


# -- the daemon ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running_daemon(tmp_path_factory.mktemp("policy"), policy=POLICY, clients=CLIENTS) as d:
        yield d


@pytest.fixture(scope="module")
def key(served: Daemon) -> object:
    with served.client("admin") as admin:
        return admin.create_key("release-targets", role="targets", repository="docker.io/acme")


def _code(exc: pytest.ExceptionInfo[ClientError]) -> grpc.StatusCode:
    return exc.value.code


def test_granted_principals_sign(served: Daemon, key: object) -> None:
    payload = tuf_payload("targets", 1)
    for name in ("alice", RELEASE_BOT):  # a CN and a SPIFFE ID (URI SAN)
        with served.client(name) as client:
            signed = client.sign(key.key_id, payload)  # type: ignore[attr-defined]
            verify(key, payload, signed.signature)


def test_admin_cannot_sign(served: Daemon, key: object) -> None:
    payload = tuf_payload("targets", 1)
    with served.client("admin") as admin, pytest.raises(ClientError) as info:
        admin.sign(key.key_id, payload)  # type: ignore[attr-defined]
    assert _code(info) == grpc.StatusCode.PERMISSION_DENIED
    assert info.value.message == (
        f"admin may not sign with key {key.key_id}: no policy rule grants 'sign'"  # type: ignore[attr-defined]
    )
    row = audit_rows(served.state, "principal = 'admin' AND operation = 'sign'")[-1]
    assert (row["outcome"], row["code"], row["payload_sha256"]) == (
        "denied",
        "PERMISSION_DENIED",
        sha256(payload),
    )


def test_pages_hold_only_readable_keys_and_miss_none(served: Daemon) -> None:
    """Keys a caller may not read do not count against its page: alice pages through the
    docker.io keys (readable) interleaved with quay.io ones (not), each once."""
    readable = []
    with served.client("admin") as admin:
        for i in range(9):
            repo = "docker.io/paging" if i % 3 == 0 else "quay.io/paging"
            key_id = admin.create_key(f"paged-{i}", role="targets", repository=repo).key_id
            if i % 3 == 0:
                readable.append(key_id)
    with served.client("alice") as alice:
        listed = [k.key_id for k in alice.list_keys(page_size=1) if "paging" in k.repository]
    assert listed == readable


def test_unknown_principal_is_denied_everything(served: Daemon, key: object) -> None:
    key_id = key.key_id  # type: ignore[attr-defined]
    with served.client("bob") as bob:
        assert bob.list_keys() == []  # keys bob may not read are left out
        calls = [
            lambda: bob.get_key(key_id),
            lambda: bob.sign(key_id, tuf_payload()),
            lambda: bob.sign_digest(key_id, hashlib.sha256(b"x").digest()),
            lambda: bob.create_key("k", role="targets"),
            lambda: bob.retire_key(key_id),
            lambda: bob.destroy_key(key_id, key_id),
        ]
        for call in calls:
            with pytest.raises(ClientError) as info:
                call()
            assert _code(info) == grpc.StatusCode.PERMISSION_DENIED, info.value
            assert info.value.message.startswith("bob may not ")
    rows = audit_rows(served.state, "principal = 'bob'")
    assert {r["operation"] for r in rows} >= {"read", "sign", "create", "retire", "destroy"}
    assert {r["outcome"] for r in rows if r["operation"] != "list"} == {"denied"}


def test_repository_and_role_globs(served: Daemon) -> None:
    with served.client("admin") as admin:
        elsewhere = admin.create_key("quay", role="targets", repository="quay.io/acme")
        delegated = admin.create_key("rel", role="targets/releases", repository="docker.io/acme")
    with served.client("alice") as alice:
        with pytest.raises(ClientError) as info:
            alice.sign(elsewhere.key_id, tuf_payload())
        assert _code(info) == grpc.StatusCode.PERMISSION_DENIED
        payload = tuf_payload("targets")
        verify(delegated, payload, alice.sign(delegated.key_id, payload).signature)


def test_raw_signing_needs_its_own_grant(served: Daemon, key: object) -> None:
    key_id = key.key_id  # type: ignore[attr-defined]
    raw = b"not TUF metadata"
    pretty = b'{"_type": "targets", "version": 9}'  # TUF-looking but not canonical: raw
    with served.client("alice") as alice:
        for payload in (raw, pretty):
            with pytest.raises(ClientError) as info:
                alice.sign(key_id, payload)
            assert _code(info) == grpc.StatusCode.PERMISSION_DENIED
            assert "'sign-raw'" in info.value.message
        with pytest.raises(ClientError) as info:
            alice.sign_digest(key_id, hashlib.sha256(raw).digest())
        assert "'sign-raw'" in info.value.message
    with served.client("raw-signer") as raw_signer:
        verify(key, raw, raw_signer.sign(key_id, raw).signature)
        assert raw_signer.sign_digest(key_id, hashlib.sha256(raw).digest()).signature
        with pytest.raises(ClientError) as info:  # TUF payloads need "sign"
            raw_signer.sign(key_id, tuf_payload())
        assert _code(info) == grpc.StatusCode.PERMISSION_DENIED


def test_denial_names_no_secret(served: Daemon, key: object) -> None:
    with served.client("bob") as bob, pytest.raises(ClientError) as info:
        bob.sign(key.key_id, tuf_payload())  # type: ignore[attr-defined]
    message = info.value.message
    with served.client("admin") as admin:
        full = admin.get_key(key.key_id)  # type: ignore[attr-defined]
    for secret in ("test-pin", full.public_key_pem[30:60], "docker.io", "object"):
        assert secret not in message


def test_rate_limited_client(served: Daemon, key: object) -> None:
    with served.client("admin") as admin:
        other = admin.create_key("limited-key", role="snapshot")
    with served.client("limited") as client:
        for version in (1, 2, 3):  # burst 3
            client.sign(other.key_id, tuf_payload("snapshot", version))
        refused = tuf_payload("snapshot", 4)  # kept: its expiry is taken from the clock
        with pytest.raises(ClientError) as info:
            client.sign(other.key_id, refused)
        assert _code(info) == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert info.value.message.startswith("rate limit for limited: 0.2/s, burst 3; retry in")
        with pytest.raises(ClientError) as info:  # SignBatch items count one each
            client.sign_batch(other.key_id, [tuf_payload("snapshot", 10 + i) for i in range(4)])
        assert _code(info) == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "4 signatures in one request exceed the burst of 3" in info.value.message
        assert client.list_keys() == []  # key management calls are not limited
    with served.client("alice") as alice:  # others are not affected
        alice.sign(key.key_id, tuf_payload("targets", 2))
    rows = audit_rows(served.state, "principal = 'limited' AND code = 'RESOURCE_EXHAUSTED'")
    assert [r["operation"] for r in rows] == ["sign", "sign"]
    assert {r["outcome"] for r in rows} == {"denied"}
    assert rows[0]["payload_sha256"] == sha256(refused)


# -- reload -------------------------------------------------------------------------------

RELOAD_BEFORE = """
[[rules]]
principals = ["admin"]
operations = ["create", "read"]
[[rules]]
principals = ["alice"]
operations = ["sign", "read", "approve"]
[tuf]
max_expiry_days = { targets = 90 }
[quorum]
approvals = 3
"""

RELOAD_AFTER = """
[[rules]]
principals = ["admin"]
operations = ["create", "read"]
[[rules]]
principals = ["alice"]
operations = ["read"]
[[rules]]
principals = ["bob"]
operations = ["sign", "read"]
[rate_limits]
bob = { rate = 0.1, burst = 2 }  # refused signatures count too
[tuf]
max_expiry_days = { targets = 10 }
[quorum]
approvals = 1
window_seconds = 60
"""


def test_sighup_swaps_the_whole_policy_keeping_connections(tmp_path: Path) -> None:
    with running_daemon(tmp_path, policy=RELOAD_BEFORE, clients=["admin", "alice", "bob"]) as d:
        with d.client("admin") as admin:
            key = admin.create_key("t", role="targets")
            root = admin.create_key("r", role="root", quorum=True)
        alice, bob = d.client("alice"), d.client("bob")  # channels stay open across the reload
        try:
            alice.sign(key.key_id, tuf_payload("targets", 1, days=30))
            request = alice.request_signature(root.key_id, tuf_payload("root", 1))
            assert request.approvals_required == 3
            (d.root / "policy.toml").write_text(RELOAD_AFTER)
            d.signal(signal.SIGHUP)

            def reloaded() -> bool:
                try:
                    bob.get_key(key.key_id)
                    return True
                except ClientError:
                    return False

            wait_for(reloaded, timeout=10)
            with pytest.raises(ClientError) as info:  # rules: alice lost "sign"
                alice.sign(key.key_id, tuf_payload("targets", 2, days=5))
            assert _code(info) == grpc.StatusCode.PERMISSION_DENIED
            assert alice.get_key(key.key_id).key_id == key.key_id  # same channel still serves
            with pytest.raises(ClientError) as info:  # tuf limits: 30 days is now too far
                bob.sign(key.key_id, tuf_payload("targets", 2, days=30))
            assert "at most 10 days ahead" in info.value.message
            bob.sign(
                key.key_id, tuf_payload("targets", 3, days=5)
            )  # spends the rest of bob's burst
            with pytest.raises(ClientError) as info:  # rate limits
                bob.sign(key.key_id, tuf_payload("targets", 4, days=5))
            assert _code(info) == grpc.StatusCode.RESOURCE_EXHAUSTED

            # A broken policy file is refused: the current policy stays.
            (d.root / "policy.toml").write_text("[[rules]\n")
            d.signal(signal.SIGHUP)
            wait_for(lambda: "policy reload failed" in d.log(), timeout=10)
            assert alice.get_key(key.key_id).key_id == key.key_id
            with pytest.raises(ClientError):
                alice.sign(key.key_id, tuf_payload("targets", 5, days=5))
        finally:
            alice.close()
            bob.close()
