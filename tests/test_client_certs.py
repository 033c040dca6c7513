"""Certificates that chain to the CA and still are no identity, CRLs, and source prefixes.

Over real mTLS against a real daemon: each refused certificate gets UNAUTHENTICATED with
a message saying why, and the daemon goes on serving good clients afterwards.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from authz_helpers import audit_rows, wait_for
from certs_helpers import (
    ClientCert,
    list_keys,
    make_client_cert,
    make_sha1_client_cert,
    refusal,
    rsa_key,
    write_crl,
)

from harness import Daemon, create_token, free_port, running_daemon, workers_of
from signer.devpki import make_ca
from signer.process import EXIT_CONFIG
from signer_api.v1 import signer_pb2 as pb
from signer_api.v1 import signer_pb2_grpc as pb_grpc
from signer_client import ClientConfig, ClientError, SignerClient


class CrlDaemon(Daemon):
    """A daemon with ``[tls] crl = "pki/crl.pem"`` (an empty CRL unless one is there)."""

    crl_name = "crl.pem"

    def write_config(self) -> None:
        super().write_config()
        crl = self.pki / self.crl_name
        if not crl.exists():
            write_crl(crl, self.pki, [])
        text = self.config_path.read_text()
        anchor = 'key = "pki/server-key.pem"\n'
        assert anchor in text
        self.config_path.write_text(
            text.replace(anchor, f'{anchor}crl = "pki/{self.crl_name}"\n', 1)
        )


def _served(daemon: Daemon) -> None:
    """The daemon is alive and serves a good client."""
    with daemon.client("admin") as client:
        client.list_keys()


def _unauthenticated_rows(daemon: Daemon) -> list[dict[str, object]]:
    return audit_rows(daemon.state, "code = 'UNAUTHENTICATED'")


# -- certificates that are never an identity ---------------------------------------------


@pytest.mark.parametrize(
    ("kind", "complaint"),
    [
        ("ca-leaf", "CA certificate (basicConstraints CA:TRUE)"),
        ("rsa-1024", "RSA-1024; at least RSA-2048"),
        ("sha1", "signed with SHA1"),
        ("blank-cn", "CN is empty or blank"),
        ("empty-cn", "CN is empty or blank"),
        ("blank-dns", "DNS SAN is empty or blank"),
        ("padded-cn", "surrounding whitespace"),
    ],
)
def test_certificate_refused_and_daemon_still_serves(
    daemon: Daemon, kind: str, complaint: str
) -> None:
    pki = daemon.pki
    if kind == "ca-leaf":  # a CA:TRUE certificate issued by the CA, named like a client
        client = make_client_cert(pki, "ca-leaf", "alice", ca=True)
    elif kind == "rsa-1024":
        client = make_client_cert(pki, "rsa-1024", "alice", key=rsa_key(1024))
    elif kind == "sha1":
        client = make_sha1_client_cert(pki, "sha1", "alice")
    elif kind == "blank-cn":
        client = make_client_cert(pki, "blank-cn", "   ")
    elif kind == "empty-cn":
        client = make_client_cert(pki, "empty-cn", "")
    elif kind == "blank-dns":  # a blank SAN does not fall back to the CN
        client = make_client_cert(pki, "blank-dns", "alice", dns=[" "])
    else:
        client = make_client_cert(pki, "padded-cn", " admin")
    before = len(_unauthenticated_rows(daemon))

    error = refusal(daemon.address, pki, client)

    assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error.details()
    assert complaint in (error.details() or "")
    _served(daemon)
    rows = _unauthenticated_rows(daemon)
    assert len(rows) == before + 1
    assert complaint in str(rows[-1]["detail"])  # audited, and under no principal's name
    assert rows[-1]["principal"] not in ("alice", "admin", "signerd dev CA")


def test_strong_keys_are_accepted(daemon: Daemon) -> None:
    """The thresholds are not off by one: RSA-2048 and a P-384 key are served."""
    from cryptography.hazmat.primitives.asymmetric import ec

    for stem, key in (
        ("rsa-2048", rsa_key(2048)),
        ("p384", ec.generate_private_key(ec.SECP384R1())),
    ):
        list_keys(daemon.address, daemon.pki, make_client_cert(daemon.pki, stem, "alice", key=key))


# -- revocation ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def crl_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("crl")
    env = create_token(root / "hsm")
    daemon = CrlDaemon(root=root, port=free_port(), env=env)
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


def _reload(daemon: Daemon, expect: str) -> None:
    seen = daemon.log().count(expect)
    daemon.signal(signal.SIGHUP)
    daemon.wait_log(expect)
    from authz_helpers import wait_for

    wait_for(lambda: daemon.log().count(expect) > seen)


def test_revoked_certificate_is_refused_after_reload(crl_daemon: Daemon) -> None:
    d = crl_daemon
    dave = make_client_cert(d.pki, "dave", "dave")
    list_keys(d.address, d.pki, dave)  # not revoked yet: served
    open_channel = grpc.secure_channel(
        d.address,
        grpc.ssl_channel_credentials(
            (d.pki / "ca.pem").read_bytes(), dave.key.read_bytes(), dave.cert.read_bytes()
        ),
    )
    stub = pb_grpc.KeyServiceStub(open_channel)
    stub.ListKeys(pb.ListKeysRequest(), timeout=10)  # connection open, principal cached

    write_crl(d.pki / "crl.pem", d.pki, [dave.serial])
    _reload(d, "CRL reloaded: 1 revoked")

    error = refusal(d.address, d.pki, dave)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "revoked" in (error.details() or "")
    with pytest.raises(grpc.RpcError) as info:  # the open connection too: checked per call
        stub.ListKeys(pb.ListKeysRequest(), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    open_channel.close()
    _served(d)  # others are not affected
    row = _unauthenticated_rows(d)[-1]
    assert "revoked" in str(row["detail"])

    # A CRL that cannot be parsed, or one signed by another CA: the old CRL stays.
    rogue = make_ca(d.root / "rogue", "rogue CA")
    for bad in (b"not a CRL", None):
        if bad is None:
            write_crl(d.pki / "crl.pem", d.pki, [], signer=rogue)
        else:
            (d.pki / "crl.pem").write_bytes(bad)
        _reload(d, "CRL reload failed, keeping the current CRL")
        assert refusal(d.address, d.pki, dave).code() == grpc.StatusCode.UNAUTHENTICATED
        _served(d)

    # Un-revoked (a DER CRL this time): dave is served again.
    write_crl(d.pki / "crl.pem", d.pki, [], der=True)
    _reload(d, "CRL reloaded: 0 revoked")
    list_keys(d.address, d.pki, dave)


@pytest.mark.parametrize("workers", [1, 2])  # 2: the supervisor refuses it before any worker
@pytest.mark.parametrize("problem", ["garbage", "rogue"])
def test_unusable_crl_at_start_is_a_config_error(
    tmp_path: Path, problem: str, workers: int
) -> None:
    daemon = CrlDaemon(
        root=tmp_path, port=free_port(), env=create_token(tmp_path / "hsm"), workers=workers
    )
    daemon.write_config()
    if problem == "garbage":
        (daemon.pki / "crl.pem").write_text(
            "-----BEGIN X509 CRL-----\nnope\n-----END X509 CRL-----\n"
        )
        complaint = "cannot be parsed"
    else:
        write_crl(
            daemon.pki / "crl.pem", daemon.pki, [], signer=make_ca(tmp_path / "rogue", "rogue")
        )
        complaint = "is not signed by a CA in"
    daemon.start(wait=False)
    assert daemon.proc is not None
    try:
        assert daemon.proc.wait(30) == EXIT_CONFIG
    finally:
        daemon.kill()
    assert complaint in daemon.log()
    assert not (daemon.state / "crl.last-good").exists()


def test_restarted_worker_keeps_the_last_good_crl(tmp_path: Path) -> None:
    """Two workers, a CRL revoking xavier; the file then broken on disk: workers restarted
    while it is broken enforce the last good CRL the supervisor kept (as for the policy)
    instead of exiting, so xavier stays refused and good clients are served."""
    daemon = CrlDaemon(root=tmp_path, port=free_port(), env=create_token(tmp_path / "hsm"))
    daemon.workers = 2
    daemon.write_config()  # the PKI, to issue xavier's certificate before the daemon starts
    xavier = make_client_cert(daemon.pki, "xavier", "xavier")
    crl = write_crl(daemon.pki / "crl.pem", daemon.pki, [xavier.serial])
    daemon.start()
    try:
        assert daemon.proc is not None
        supervisor = daemon.proc.pid
        kept = daemon.state / "crl.last-good"
        assert kept.read_bytes() == crl.read_bytes() and kept.stat().st_mode & 0o777 == 0o600
        assert "revoked" in (refusal(daemon.address, daemon.pki, xavier).details() or "")

        crl.write_bytes(b"-----BEGIN X509 CRL-----\nbroken\n-----END X509 CRL-----\n")
        daemon.signal(signal.SIGHUP)  # the supervisor keeps its copy, the workers theirs
        daemon.wait_log("workers keep the last good CRL")
        assert kept.read_bytes() != crl.read_bytes()
        # Both workers killed, one after the other: every later call is served by a worker
        # started while the file on disk is broken.
        wait_for(lambda: len(workers_of(supervisor)) == 2)
        for victim in workers_of(supervisor):
            os.kill(victim, signal.SIGKILL)
            wait_for(
                lambda v=victim: len(workers := workers_of(supervisor)) == 2 and v not in workers,
                timeout=30,
            )
        wait_for(lambda: daemon.log().count("enforcing the last good CRL") >= 2, timeout=30)
        daemon.wait_serving()
        for _ in range(6):  # new connections, served by the restarted workers
            error = refusal(daemon.address, daemon.pki, xavier)
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "is revoked by the CRL crl.pem" in (error.details() or "")
            _served(daemon)
        assert daemon.proc.poll() is None and len(workers_of(supervisor)) == 2
        assert "cannot be parsed" in daemon.log()  # why: the broken file, named
    finally:
        daemon.stop()


# -- where a name came from: uri:, dns:, cn: in the policy -----------------------------------

PREFIX_POLICY = """
[groups]
readers = ["cn:carol", "erin"]

[[rules]]
principals = ["dns:admin"]
operations = ["create", "read"]

[[rules]]
principals = ["group:readers", "uri:spiffe://example.org/*"]
operations = ["read"]
"""


def _client(d: Daemon, cert: ClientCert) -> SignerClient:
    return SignerClient(
        ClientConfig(
            address=d.address,
            ca=d.pki / "ca.pem",
            cert=cert.cert,
            key=cert.key,
            timeout=10,
            retries=0,
        )
    )


def test_source_prefixes_in_rules_and_groups(tmp_path: Path) -> None:
    with running_daemon(tmp_path, policy=PREFIX_POLICY, clients=["admin"]) as d:
        dns_admin = make_client_cert(d.pki, "dns-admin", "someone", dns=["admin"])
        cn_admin = make_client_cert(d.pki, "cn-admin", "admin")
        with _client(d, dns_admin) as client:
            key = client.create_key("k1", role="targets")

        for stem, cert, allowed in [
            ("cn-admin", cn_admin, False),  # a CN admin is not the DNS SAN admin
            ("cn-carol", make_client_cert(d.pki, "cn-carol", "carol"), True),
            ("dns-carol", make_client_cert(d.pki, "dns-carol", "x", dns=["carol"]), False),
            ("cn-erin", make_client_cert(d.pki, "cn-erin", "erin"), True),  # bare: any source
            ("dns-erin", make_client_cert(d.pki, "dns-erin", "x", dns=["erin"]), True),
            ("uri", make_client_cert(d.pki, "uri", "x", uris=["spiffe://example.org/a"]), True),
            ("cn-uri", make_client_cert(d.pki, "cn-uri", "spiffe://example.org/a"), False),
        ]:
            with _client(d, cert) as client:
                if allowed:
                    assert client.get_key(key.key_id).key_id == key.key_id, stem
                    continue
                with pytest.raises(ClientError) as info:
                    client.get_key(key.key_id)
                assert info.value.code == grpc.StatusCode.PERMISSION_DENIED, stem
        with _client(d, cn_admin) as client, pytest.raises(ClientError) as info:
            client.create_key("k2", role="targets")
        assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
        denied = audit_rows(d.state, "operation = 'create' AND outcome = 'denied'")
        assert [r["principal"] for r in denied] == ["admin"]
        with _client(d, dns_admin) as client:  # still served after the refusals
            assert client.get_key(key.key_id).key_id == key.key_id
