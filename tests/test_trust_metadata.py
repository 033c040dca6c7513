"""signer_client.trust's notary model against the real notary CLI and notary-server.

The notary CLI initialises a repository on a notary-server that signs through signerd,
adds targets, a delegation and a delegated target, has the server rotate its snapshot
key and rotates the root key. Then everything notary wrote is read back through
NotaryServerClient and checked: our canonical JSON is the bytes notary signed, the file
re-serialises byte for byte, every signature verifies with our code, the role models
round-trip, key IDs match ``notary key list``, and the verifier accepts the repository
and refuses tampered copies. A second repository built and signed entirely with the
model (local keys) is published to the same server, which accepts it; a stale publish
of it is a ConflictError.
"""

from __future__ import annotations

import copy
import datetime as dt
import http.server
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from notary_harness import (
    NOTARY_SERVER_PRINCIPAL,
    NotaryCLI,
    NotaryServer,
    delegation_key,
    require,
    start_notary_server,
    stop_notary_server,
)

from harness import Daemon, free_port, running_daemon
from signer_client.trust import canonical
from signer_client.trust.metadata import (
    DelegatedRole,
    Envelope,
    FileMeta,
    PublicKey,
    RoleKeys,
    Root,
    Snapshot,
    Targets,
    Timestamp,
    VerificationError,
    certificate_key,
    ecdsa_key,
    ed25519_key,
    go_time,
    parse_go_time,
    verify_role,
)
from signer_client.trust.notary_server import (
    ConflictError,
    NotaryServerClient,
    RejectedError,
    RepositoryNotFoundError,
    ServerUnavailableError,
    UnauthorizedError,
)
from signer_client.trust.verify import TrustPinning, verify_repository

GUN = "example.com/trust-model"
MODEL_GUN = "example.com/built-by-model"
ODD_NAME = "a<b&c>\u00e9\u2028"
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
MODEL_CLASSES: dict[str, Any] = {
    "Root": Root,
    "Targets": Targets,
    "Snapshot": Snapshot,
    "Timestamp": Timestamp,
}


# -- local keys (for the repository the model builds, and for tampering) ------------------


@dataclass
class LocalKey:
    private: Any
    public: PublicKey
    method: str

    def sign(self, payload: bytes) -> bytes:
        if isinstance(self.private, ec.EllipticCurvePrivateKey):
            r, s = decode_dss_signature(self.private.sign(payload, ec.ECDSA(hashes.SHA256())))
            return r.to_bytes(32, "big") + s.to_bytes(32, "big")
        signature: bytes = self.private.sign(payload)
        return signature

    def sign_envelope(self, envelope: Envelope) -> None:
        envelope.add_signature(self.public.key_id, self.sign(envelope.payload()), self.method)


def ecdsa_local() -> LocalKey:
    key = ec.generate_private_key(ec.SECP256R1())
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return LocalKey(key, ecdsa_key(spki), "ecdsa")


def ed25519_local() -> LocalKey:
    key = ed25519.Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return LocalKey(key, ed25519_key(raw), "eddsa")


def root_cert_local(gun: str, days: int = 3650) -> LocalKey:
    """A root key with a self-signed certificate made the way notary makes one."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, gun)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(
            x509.KeyUsage(True, False, True, False, False, False, False, False, False), True
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    return LocalKey(key, certificate_key(cert.public_bytes(serialization.Encoding.PEM)), "ecdsa")


# -- the deployment -----------------------------------------------------------------------


@dataclass
class Repo:
    daemon: Daemon
    server: NotaryServer
    client: NotaryServerClient
    root: Path
    key_list: str  # `notary key list` output
    delegation_cert: bytes

    def fetch(self, name: str) -> bytes:
        return self.client.get(GUN, name)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Repo]:
    require("notary-server")
    require("notary")
    root = tmp_path_factory.mktemp("trust-model")
    with running_daemon(
        root / "signerd", clients=["admin", NOTARY_SERVER_PRINCIPAL], policy=POLICY
    ) as daemon:
        server = start_notary_server(root, daemon, "ecdsa")
        try:
            ca = daemon.pki / "ca.pem"

            def logs() -> str:
                return f"--- notary-server log (tail)\n{server.log()[-4000:]}"

            cli = NotaryCLI(server, root / "trust-alice", ca, logs)
            (root / "one.txt").write_text("one\n")
            (root / "two.txt").write_text("two\n")
            (root / "three.txt").write_text("three\n")
            cli("init", GUN)
            cli("add", GUN, "v1", str(root / "one.txt"))
            cli("add", GUN, ODD_NAME, str(root / "one.txt"))  # json.Marshal escapes <&>
            cli("publish", GUN)
            key_path, cert_path = delegation_key(root)
            cli("delegation", "add", GUN, "targets/releases", str(cert_path), "--all-paths")
            cli("key", "import", str(key_path), "-r", "targets/releases", "-g", GUN)
            cli("publish", GUN)
            cli("add", GUN, "v2", str(root / "two.txt"), "--roles", "targets/releases")
            cli("publish", GUN)
            cli("key", "rotate", GUN, "snapshot", "-r")
            out = cli("key", "rotate", GUN, "root", stdin="yes\n")
            assert "Successfully rotated root" in out, out
            cli("add", GUN, "v3", str(root / "three.txt"))
            cli("publish", GUN)
            client = NotaryServerClient(server.url, ca_file=ca, timeout=10)
            yield Repo(daemon, server, client, root, cli("key", "list"), cert_path.read_bytes())
        finally:
            stop_notary_server(server)


def signed_bytes(raw: bytes) -> bytes:
    """The exact bytes under "signed" in a file notary wrote."""
    text = raw.decode()
    prefix = '{"signed":'
    assert text.startswith(prefix), text[:80]
    _, end = json.JSONDecoder().raw_decode(text, len(prefix))
    return text[len(prefix) : end].encode()


def all_files(repo: Repo) -> dict[str, bytes]:
    """Every current file, and every stored root version."""
    files = {name: repo.fetch(name) for name in ("root", "targets", "snapshot", "timestamp")}
    files["targets/releases"] = repo.fetch("targets/releases")
    newest = Envelope.from_bytes(files["root"]).version
    for version in range(1, newest + 1):
        files[f"{version}.root"] = repo.fetch(f"{version}.root")
    return files


# -- (a) canonical bytes and signatures ----------------------------------------------------


def test_canonical_encoding_is_what_notary_signed(repo: Repo) -> None:
    files = all_files(repo)
    assert Envelope.from_bytes(files["root"]).version >= 2, "the root rotation did not publish"
    root = Root.from_envelope(Envelope.from_bytes(files["root"]))
    targets = Targets.from_envelope(Envelope.from_bytes(files["targets"]))
    for name, raw in files.items():
        envelope = Envelope.from_bytes(raw)
        # notary signed the raw payload; the file embeds it with <>& and U+2028 escaped.
        assert canonical.html_escape(envelope.payload()) == signed_bytes(raw), name
        # ... and the file itself is what Go's json.Marshal of the envelope writes.
        assert envelope.to_bytes() == raw, name
        assert envelope.signatures, name
        role = name.split(".")[-1]
        if role == "root":
            keys = Root.from_envelope(envelope).keys
        elif name == "targets/releases":
            keys = targets.delegations.keys
        else:
            keys = root.keys
        for sig in envelope.signatures:
            assert sig.keyid in keys, f"{name}: signed by unknown key {sig.keyid}"
            key = keys[sig.keyid]
            assert sig.method == "ecdsa", (name, sig.method)
            assert key.verify(sig.method, sig.sig, envelope.payload()), (name, sig.keyid)
            assert not key.verify(sig.method, sig.sig, envelope.payload() + b" "), name


def test_canonical_rules() -> None:
    # Go's canonical mode writes strings raw: no \u escapes for <>&, U+2028 or non-ASCII.
    value = {"b": ["<&>", "\u2028é", 'q"\\'], "a": 1, "é": True, "Z": None, "n": 2.0}
    assert canonical.encode(value) == (
        '{"Z":null,"a":1,"b":["<&>","\u2028é","q\\"\\\\"],"n":2,"é":true}'.encode()
    )
    assert canonical.html_escape("<&>\u2028".encode()) == b"\\u003c\\u0026\\u003e\\u2028"
    with pytest.raises(canonical.CanonicalError):
        canonical.encode({"x": 1.5})
    with pytest.raises(canonical.CanonicalError):
        canonical.encode({1: "x"})
    # Go's time.Time JSON: RFC 3339, nanoseconds, trailing zeros cut, offsets kept.
    assert go_time(parse_go_time("2035-01-02T03:04:05.1200Z")) == "2035-01-02T03:04:05.12Z"
    assert go_time(parse_go_time("2035-01-02T03:04:05+02:00")) == "2035-01-02T03:04:05+02:00"
    assert parse_go_time("2035-01-02T03:04:05.123456789Z").microsecond == 123456


# -- (b) model round trips -----------------------------------------------------------------


def test_models_round_trip(repo: Repo) -> None:
    for name, raw in all_files(repo).items():
        envelope = Envelope.from_bytes(raw)
        model = MODEL_CLASSES[envelope.type].from_signed(envelope.signed)
        assert canonical.encode(model.to_signed()) == envelope.payload(), name
        assert model.payload() == envelope.payload(), name
    targets = Targets.from_envelope(Envelope.from_bytes(repo.fetch("targets")))
    snapshot = Snapshot.from_envelope(Envelope.from_bytes(repo.fetch("snapshot")))
    assert set(targets.targets) == {"v1", "v3", ODD_NAME}
    assert b"\\u003c" in repo.fetch("targets") and b"<" in targets.payload()
    assert targets.targets["v1"].hashes["sha256"] == FileMeta.from_data(b"one\n").hashes["sha256"]
    assert targets.targets["v1"].length == 4
    releases = targets.delegations.role("targets/releases")
    assert releases is not None and releases.paths == [""] and releases.threshold == 1
    assert {"root", "targets", "targets/releases"} <= set(snapshot.meta)
    assert set(snapshot.meta["targets"].hashes) == {"sha256", "sha512"}
    # A changed expiry re-encodes as Go would; an unchanged one keeps notary's digits.
    changed = copy.deepcopy(targets)
    changed.expires = dt.datetime(2040, 1, 2, 3, 4, 5, 600000, tzinfo=dt.UTC)
    assert changed.to_signed()["expires"] == "2040-01-02T03:04:05.6Z"


# -- (c) the verifier ----------------------------------------------------------------------


def test_verifier_accepts_the_real_repository(repo: Repo) -> None:
    verified = verify_repository(GUN, repo.fetch)
    listing = verified.list_targets()
    assert {name: role for name, (role, _) in listing.items()} == {
        "v1": "targets",
        ODD_NAME: "targets",
        "v3": "targets",
        "v2": "targets/releases",
    }
    assert listing["v2"][1].hashes["sha256"] == FileMeta.from_data(b"two\n").hashes["sha256"]
    # From the first root, following the rotation (2.root signed by the old and new key).
    first = Root.from_envelope(Envelope.from_bytes(repo.fetch("1.root")))
    rotated = verify_repository(GUN, repo.fetch, trusted_root=first)
    assert rotated.root.version == verified.root.version >= 2
    assert first.roles["root"].keyids != rotated.root.roles["root"].keyids
    # Pinned certificate IDs: the current root certificate is accepted, others are not.
    current = verified.root.roles["root"].keyids
    pinned = verify_repository(GUN, repo.fetch, pinning=TrustPinning(certs={GUN: current}))
    assert pinned.root.version == verified.root.version
    wildcard = TrustPinning(certs={"example.com/*": current})
    assert verify_repository(GUN, repo.fetch, pinning=wildcard).root.version >= 2
    with pytest.raises(VerificationError, match="trust pinning"):
        verify_repository(GUN, repo.fetch, pinning=TrustPinning(certs={GUN: ["0" * 64]}))
    with pytest.raises(VerificationError, match="TOFU is disabled"):
        verify_repository(GUN, repo.fetch, pinning=TrustPinning(disable_tofu=True))
    with pytest.raises(VerificationError, match="trust pinning"):
        verify_repository(GUN, repo.fetch, pinning=TrustPinning(ca={"example.com": ca_pem()}))
    # Version floors from a previous run pass; rollback to older files does not.
    assert verify_repository(GUN, repo.fetch, min_versions=verified.versions())


def ca_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "some CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def tampered(
    files: dict[str, bytes], name: str, change: Callable[[Envelope], None]
) -> Callable[[str], bytes]:
    """A fetch over ``files`` with ``name``'s envelope changed by ``change``."""
    served = dict(files)
    envelope = Envelope.from_bytes(files[name])
    change(envelope)
    served[name] = envelope.to_bytes()
    return served.__getitem__


def test_verifier_refuses_tampered_copies(repo: Repo) -> None:
    files = all_files(repo)
    verified = verify_repository(GUN, files.__getitem__)

    def change_target(env: Envelope) -> None:
        env.signed["targets"]["v1"]["length"] = 5

    with pytest.raises(VerificationError, match=r"^targets: sha256 does not match"):
        verify_repository(GUN, tampered(files, "targets", change_target))
    # ... and its signature no longer verifies (the snapshot could not be re-signed).
    env = Envelope.from_bytes(files["targets"])
    change_target(env)
    spec = verified.root.roles["targets"]
    with pytest.raises(VerificationError, match=r"^targets: 0 of 1 required signatures valid"):
        verify_role(env, verified.root.keys, spec.keyids, spec.threshold, "targets")

    # Stale version: an older timestamp against the versions already seen.
    floors = verified.versions()
    old = dict(files)
    old["timestamp"] = repo.fetch("1.timestamp")
    with pytest.raises(VerificationError, match=r"^timestamp: version 1 is lower than trusted"):
        verify_repository(GUN, old.__getitem__, min_versions=floors)
    floors["targets/releases"] += 1
    with pytest.raises(VerificationError, match=r"^targets/releases: version"):
        verify_repository(GUN, files.__getitem__, min_versions=floors)

    # Wrong key: the timestamp signed by a key root does not list.
    intruder = ecdsa_local()

    def resign(env: Envelope) -> None:
        env.signatures = []
        intruder.sign_envelope(env)

    with pytest.raises(VerificationError, match=r"^timestamp: 0 of 1 required signatures"):
        verify_repository(GUN, tampered(files, "timestamp", resign))

    # The right key ID over a signature by another key.
    def swap(env: Envelope) -> None:
        env.signatures[0].sig = intruder.sign(env.payload())

    with pytest.raises(VerificationError, match="invalid signatures by"):
        verify_repository(GUN, tampered(files, "timestamp", swap))

    # Expired: everything is checked at a time past the timestamp's expiry.
    later = verified.timestamp.expires + dt.timedelta(seconds=1)
    with pytest.raises(VerificationError, match=r"^timestamp: expired at"):
        verify_repository(GUN, files.__getitem__, now=later)

    # A root from another repository's point of view: its CN is not that GUN.
    with pytest.raises(VerificationError, match="no valid root certificate"):
        verify_repository("example.com/other", files.__getitem__)

    # Root with its signature removed.
    def unsign(env: Envelope) -> None:
        env.signatures = []

    with pytest.raises(VerificationError, match=r"^root: no signatures"):
        verify_repository(GUN, tampered(files, "root", unsign))


# -- (d) key IDs ---------------------------------------------------------------------------


def test_key_ids_match_the_notary_cli(repo: Repo) -> None:
    root = Root.from_envelope(Envelope.from_bytes(repo.fetch("root")))
    (root_id,) = root.roles["root"].keyids
    cert_key = root.keys[root_id]
    assert cert_key.keytype == "ecdsa-x509"
    assert cert_key.key_id == root_id
    # notary key list prints the private key's (canonical) ID, not the certificate's.
    assert cert_key.canonical_id in repo.key_list, repo.key_list
    assert root_id not in repo.key_list
    for role in ("targets",):
        (kid,) = root.roles[role].keyids
        assert root.keys[kid].keytype == "ecdsa" and kid in repo.key_list
    targets = Targets.from_envelope(Envelope.from_bytes(repo.fetch("targets")))
    releases = targets.delegations.role("targets/releases")
    assert releases is not None
    (delegated_id,) = releases.keyids
    delegated = targets.delegations.keys[delegated_id]
    assert delegated == certificate_key(repo.delegation_cert)
    assert delegated.canonical_id in repo.key_list
    # The server's key endpoints serve the root's timestamp and snapshot keys.
    for role in ("timestamp", "snapshot"):
        assert repo.client.get_key(GUN, role).key_id in root.roles[role].keyids


# -- a repository built by the model, published to notary-server ---------------------------


def model_repository(
    server_timestamp: PublicKey,
) -> tuple[dict[str, LocalKey], Envelope, Envelope, Envelope]:
    keys = {
        "root": root_cert_local(MODEL_GUN),
        "targets": ecdsa_local(),
        "snapshot": ed25519_local(),
        "releases": ecdsa_local(),
    }
    root = Root(consistent=False)
    for role in ("root", "targets", "snapshot"):
        root.add_key(role, keys[role].public)
    root.keys[server_timestamp.key_id] = server_timestamp
    root.roles["timestamp"] = RoleKeys([server_timestamp.key_id], 1)
    root_env = root.envelope()
    keys["root"].sign_envelope(root_env)

    targets = Targets()
    targets.targets["app"] = FileMeta.from_data(b"application\n")
    targets.delegations.keys[keys["releases"].public.key_id] = keys["releases"].public
    targets.delegations.roles.append(
        DelegatedRole("targets/releases", [keys["releases"].public.key_id], 1, ["release/"])
    )
    targets_env = targets.envelope()
    keys["targets"].sign_envelope(targets_env)

    releases = Targets()
    releases.targets["release/1.0"] = FileMeta.from_data(b"1.0\n")
    releases_env = releases.envelope()
    keys["releases"].sign_envelope(releases_env)
    return keys, root_env, targets_env, releases_env


def test_publish_a_repository_built_by_the_model(repo: Repo) -> None:
    client = repo.client
    timestamp_key = client.get_key(MODEL_GUN, "timestamp")
    keys, root_env, targets_env, releases_env = model_repository(timestamp_key)
    snapshot = Snapshot()
    for name, env in (
        ("root", root_env),
        ("targets", targets_env),
        ("targets/releases", releases_env),
    ):
        snapshot.meta[name] = FileMeta.from_data(env.to_bytes())
    snapshot_env = snapshot.envelope()
    keys["snapshot"].sign_envelope(snapshot_env)
    client.publish(
        MODEL_GUN,
        {
            "root": root_env.to_bytes(),
            "targets": targets_env.to_bytes(),
            "targets/releases": releases_env.to_bytes(),
            "snapshot": snapshot_env.to_bytes(),
        },
    )
    # notary-server stored our bytes as sent and signed a timestamp over our snapshot.
    assert client.get(MODEL_GUN, "targets") == targets_env.to_bytes()

    def fetch(name: str) -> bytes:
        return client.get(MODEL_GUN, name)

    verified = verify_repository(MODEL_GUN, fetch)
    assert {n: r for n, (r, _) in verified.list_targets().items()} == {
        "app": "targets",
        "release/1.0": "targets/releases",
    }
    assert verified.snapshot.version == 1 and verified.timestamp.version >= 1
    assert verified.envelopes["snapshot"].signatures[0].method == "eddsa"

    # Paths: a delegated target outside "release/" is refused (strict) or dropped.
    releases = Targets.from_envelope(releases_env)
    releases.targets["elsewhere"] = FileMeta.from_data(b"x")
    files = {name: fetch(name) for name in ("root", "timestamp", "targets")}
    files.update(local_chain(keys, files, releases))
    with pytest.raises(VerificationError, match="outside the delegated paths"):
        verify_repository(MODEL_GUN, files.__getitem__)
    lenient = verify_repository(MODEL_GUN, files.__getitem__, strict=False).list_targets()
    assert "release/1.0" in lenient and "elsewhere" not in lenient

    # Bad threshold: root asks for two targets signatures, targets has one.
    root = Root.from_envelope(root_env)
    root.roles["targets"].threshold = 2
    root.add_key("targets", ecdsa_local().public)
    files = {"targets": targets_env.to_bytes(), "targets/releases": releases_env.to_bytes()}
    new_root = root.envelope()
    keys["root"].sign_envelope(new_root)
    files["root"] = new_root.to_bytes()
    files.update(local_chain(keys, files, None))
    with pytest.raises(VerificationError, match=r"^targets: 1 of 2 required signatures"):
        verify_repository(MODEL_GUN, files.__getitem__)

    # The snapshot key is ours, so every publish carries a snapshot we sign.
    def publish_targets(env: Envelope, snapshot_version: int) -> None:
        snap = Snapshot(version=snapshot_version)
        snap.meta["root"] = FileMeta.from_data(root_env.to_bytes())
        snap.meta["targets"] = FileMeta.from_data(env.to_bytes())
        snap.meta["targets/releases"] = FileMeta.from_data(releases_env.to_bytes())
        snap_env = snap.envelope()
        keys["snapshot"].sign_envelope(snap_env)
        client.publish(MODEL_GUN, {"targets": env.to_bytes(), "snapshot": snap_env.to_bytes()})

    # A stale publish: targets version 1 again (the server holds version 1).
    stale = Targets.from_envelope(targets_env)
    stale.targets["other"] = FileMeta.from_data(b"other\n")
    stale_env = stale.envelope()
    keys["targets"].sign_envelope(stale_env)
    with pytest.raises(ConflictError, match="stale update") as info:
        publish_targets(stale_env, 2)
    assert (info.value.status, info.value.code) == (400, "VERSION")
    # An old root version is stale too (notary: "must increment the version").
    older = Root.from_envelope(root_env)
    older.version = 0
    older_env = older.envelope()
    keys["root"].sign_envelope(older_env)
    with pytest.raises(ConflictError, match="must increment"):
        client.publish(MODEL_GUN, {"root": older_env.to_bytes()})
    # A badly signed targets is rejected with notary's reason.
    stale.version = 2
    unsigned = stale.envelope()
    ecdsa_local().sign_envelope(unsigned)
    with pytest.raises(RejectedError, match="invalid targets") as rejected:
        publish_targets(unsigned, 2)
    assert rejected.value.code == "INVALID_UPDATE"
    # A correct version 2 goes through, and the verifier sees it.
    good = stale.envelope()
    keys["targets"].sign_envelope(good)
    publish_targets(good, 2)
    assert "other" in verify_repository(MODEL_GUN, fetch).list_targets()


def local_chain(
    keys: dict[str, LocalKey], files: dict[str, bytes], releases: Targets | None
) -> dict[str, bytes]:
    """A locally signed root/snapshot/timestamp over ``files`` (and a re-signed
    ``releases``): the server's timestamp key is swapped for a local one in root, so a
    tampered repository can carry a valid chain above the part under test."""
    out: dict[str, bytes] = {}
    if releases is not None:
        env = releases.envelope()
        keys["releases"].sign_envelope(env)
        out["targets/releases"] = env.to_bytes()
    timestamp_key = ecdsa_local()
    root = Root.from_envelope(Envelope.from_bytes(files["root"]))
    root.revoke_key("timestamp", root.roles["timestamp"].keyids[0])
    root.add_key("timestamp", timestamp_key.public)
    env = root.envelope()
    keys["root"].sign_envelope(env)
    out["root"] = env.to_bytes()
    merged = {**files, **out}
    snapshot = Snapshot()
    for name in ("root", "targets", "targets/releases"):
        snapshot.meta[name] = FileMeta.from_data(merged[name])
    snap_env = snapshot.envelope()
    keys["snapshot"].sign_envelope(snap_env)
    out["snapshot"] = snap_env.to_bytes()
    ts_env = Timestamp(meta={"snapshot": FileMeta.from_data(out["snapshot"])}).envelope()
    timestamp_key.sign_envelope(ts_env)
    out["timestamp"] = ts_env.to_bytes()
    return out


# -- signature checks in isolation ---------------------------------------------------------


def test_verify_role_thresholds_and_key_ids() -> None:
    one, two = ecdsa_local(), ed25519_local()
    env = Targets().envelope()
    one.sign_envelope(env)
    two.sign_envelope(env)
    keys = {one.public.key_id: one.public, two.public.key_id: two.public}
    assert verify_role(env, keys, keys, 2) == set(keys)
    with pytest.raises(VerificationError, match="2 of 3 required"):
        verify_role(env, keys, keys, 3)
    with pytest.raises(VerificationError, match="invalid threshold"):
        verify_role(env, keys, keys, 0)
    # A key listed under an ID that is not its own.
    with pytest.raises(VerificationError, match="does not hash to its ID"):
        verify_role(env, {one.public.key_id: two.public}, [one.public.key_id], 1)


# -- (e) server client errors --------------------------------------------------------------


def test_unknown_gun_is_repository_not_found(repo: Repo) -> None:
    with pytest.raises(RepositoryNotFoundError, match=r"example\.com/nothing-here: root"):
        repo.client.get("example.com/nothing-here", "root")


def test_nothing_listening_is_server_unavailable(repo: Repo) -> None:
    client = NotaryServerClient(
        f"https://127.0.0.1:{free_port()}", ca_file=repo.daemon.pki / "ca.pem", timeout=5
    )
    with pytest.raises(ServerUnavailableError, match="cannot reach"):
        client.get(GUN, "root")


class TokenServer(http.server.BaseHTTPRequestHandler):
    """A registry-style token service and a protected notary endpoint, for the auth flow."""

    seen: list[str] = []

    def do_GET(self) -> None:
        self.seen.append(f"{self.path} {self.headers.get('Authorization', '')}")
        port = getattr(self.server, "server_port", 0)
        if self.path.startswith("/token"):
            if self.headers.get("Authorization") != "Basic YWxpY2U6c2VjcmV0":  # alice:secret
                self.send_response(401)
                self.end_headers()
                return
            self.reply(200, b'{"token": "t0k3n"}')
        elif self.headers.get("Authorization") == "Bearer t0k3n":
            self.reply(200, b'{"signed":{},"signatures":[]}')
        else:
            self.send_response(401)
            self.send_header(
                "WWW-Authenticate",
                f'Bearer realm="http://127.0.0.1:{port}/token",service="notary",'
                'scope="repository:example.com/app:pull"',
            )
            self.end_headers()

    def reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_token_auth_and_unauthorized() -> None:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), TokenServer)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        good = NotaryServerClient(url, username="alice", password="secret", timeout=5)
        assert good.get("example.com/app", "root") == b'{"signed":{},"signatures":[]}'
        assert any("service=notary" in s and "scope=repository" in s for s in TokenServer.seen)
        with pytest.raises(UnauthorizedError, match="credentials refused"):
            NotaryServerClient(url, username="alice", password="wrong", timeout=5).get(
                "example.com/app", "root"
            )
        with pytest.raises(UnauthorizedError, match="authentication required"):
            NotaryServerClient(url, timeout=5).get("example.com/app", "root")
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_stopped_server_is_server_unavailable(repo: Repo) -> None:
    """Last: stops the module's notary-server."""
    stop_notary_server(repo.server)
    with pytest.raises(ServerUnavailableError):
        repo.client.get(GUN, "root")
