"""Only clients with a certificate from the configured CA get in; there is no plaintext port."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from authz_helpers import audit_rows

from harness import Daemon
from signer.devpki import issue_client, make_ca
from signer_api.v1 import signer_pb2 as pb
from signer_api.v1 import signer_pb2_grpc as pb_grpc


def _list_keys(channel: grpc.Channel) -> object:
    return pb_grpc.KeyServiceStub(channel).ListKeys(pb.ListKeysRequest(), timeout=5)


def test_client_with_valid_certificate_is_served(daemon: Daemon) -> None:
    """Served, and known by the name in its certificate: the key it creates is listed,
    and the audit log records the call under that name."""
    with daemon.channel("alice") as channel:
        request = pb.CreateKeyRequest(
            label="mtls-served", algorithm=pb.ALGORITHM_ECDSA_SHA2_NISTP256, role="targets"
        )
        created = pb_grpc.KeyServiceStub(channel).CreateKey(request, timeout=10).key
        listed = _list_keys(channel)
    assert created.key_id in [k.key_id for k in listed.keys]  # type: ignore[attr-defined]
    rows = audit_rows(daemon.state, "operation = 'create' AND key_id = ?", (created.key_id,))
    assert [(r["principal"], r["outcome"]) for r in rows] == [("alice", "allowed")]


def test_client_without_certificate_is_rejected(daemon: Daemon) -> None:
    creds = grpc.ssl_channel_credentials(root_certificates=(daemon.pki / "ca.pem").read_bytes())
    with (
        grpc.secure_channel(daemon.address, creds) as channel,
        pytest.raises(grpc.RpcError) as info,
    ):
        _list_keys(channel)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # the TLS handshake fails


def test_client_with_certificate_from_another_ca_is_rejected(
    daemon: Daemon, tmp_path: Path
) -> None:
    rogue_ca = make_ca(tmp_path, "rogue CA")
    issue_client(tmp_path, "admin", rogue_ca)  # same name, wrong issuer
    creds = grpc.ssl_channel_credentials(
        root_certificates=(daemon.pki / "ca.pem").read_bytes(),
        private_key=(tmp_path / "client-admin-key.pem").read_bytes(),
        certificate_chain=(tmp_path / "client-admin.pem").read_bytes(),
    )
    with (
        grpc.secure_channel(daemon.address, creds) as channel,
        pytest.raises(grpc.RpcError) as info,
    ):
        _list_keys(channel)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_plaintext_is_refused(daemon: Daemon) -> None:
    with grpc.insecure_channel(daemon.address) as channel, pytest.raises(grpc.RpcError) as info:
        _list_keys(channel)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_client_checks_the_server_certificate(daemon: Daemon, tmp_path: Path) -> None:
    """A client trusting another CA refuses our server: the trust goes both ways."""
    make_ca(tmp_path, "other CA")
    creds = grpc.ssl_channel_credentials(
        root_certificates=(tmp_path / "ca.pem").read_bytes(),
        private_key=(daemon.pki / "client-admin-key.pem").read_bytes(),
        certificate_chain=(daemon.pki / "client-admin.pem").read_bytes(),
    )
    with (
        grpc.secure_channel(daemon.address, creds) as channel,
        pytest.raises(grpc.RpcError) as info,
    ):
        _list_keys(channel)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
