"""Say what is wrong with TLS, instead of gRPC's "Socket closed" or a page of C-core log.

Two steps. ``check_files`` runs before a channel is made: the CA, certificate and key
files exist, parse, and the certificate belongs to the key (gRPC would log a dozen lines
and report "Failed to create security handshaker"). ``diagnose`` runs only after a call
failed with UNAVAILABLE: it repeats the TLS handshake with Python's ``ssl`` on every
address the name resolves to, and names the first real cause (the server's certificate
is not trusted by our CA file; the daemon closed the connection because it does not
accept our certificate; nothing listens), where gRPC reports only its last attempt
(often a "Connection refused" on ``[::1]`` when the daemon listens on 127.0.0.1).
"""

from __future__ import annotations

import socket
import ssl
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)

from signer_client.config import ClientConfig
from signer_client.errors import TlsConfigError

# HTTP/2 client preface and an empty SETTINGS frame: a gRPC server answers with SETTINGS.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def check_files(config: ClientConfig) -> None:
    """Refuse missing, unreadable or mismatched TLS files before gRPC sees them."""
    cas = _load_certs(config.ca, "CA file")
    if not cas:
        raise TlsConfigError(f"CA file {config.ca} holds no PEM certificate")
    certs = _load_certs(config.cert, "client certificate")
    if not certs:
        raise TlsConfigError(f"client certificate {config.cert} holds no PEM certificate")
    try:
        key = load_pem_private_key(_read(config.key, "client key"), password=None)
    except (ValueError, TypeError) as exc:
        raise TlsConfigError(
            f"client key {config.key} is not an unencrypted PEM key: {exc}"
        ) from None
    spki = (Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    if certs[0].public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise TlsConfigError(
            f"client certificate {config.cert} does not belong to key {config.key} "
            "(their public keys differ)"
        )
    now = datetime.now(UTC)
    if certs[0].not_valid_after_utc < now:
        raise TlsConfigError(
            f"client certificate {config.cert} expired on {certs[0].not_valid_after_utc:%Y-%m-%d}"
        )
    if certs[0].not_valid_before_utc > now:
        raise TlsConfigError(
            f"client certificate {config.cert} is valid only from "
            f"{certs[0].not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
        )


def diagnose(config: ClientConfig, timeout: float = 3.0) -> str | None:
    """Why a connection to the daemon fails, in one sentence; None if TLS works."""
    host, port = _split(config.address)
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        return f"cannot resolve {host!r}: {exc}"
    try:
        context = ssl.create_default_context(cafile=str(config.ca))
        context.load_cert_chain(str(config.cert), str(config.key))
    except (OSError, ssl.SSLError) as exc:
        return f"cannot use the TLS files: {exc}"
    context.set_alpn_protocols(["h2"])
    refused = []
    for family, kind, proto, _, sockaddr in addresses:
        where = f"[{sockaddr[0]}]:{port}" if family == socket.AF_INET6 else f"{sockaddr[0]}:{port}"
        try:
            sock = socket.socket(family, kind, proto)
            sock.settimeout(timeout)
            sock.connect(sockaddr)
        except OSError as exc:
            sock.close()
            refused.append(f"{where}: {exc.strerror or exc}")
            continue
        try:
            with context.wrap_socket(sock, server_hostname=config.server_name or host) as tls:
                tls.sendall(_H2_PREFACE)
                answer = tls.recv(9)
        except ssl.SSLCertVerificationError as exc:
            return (
                f"the server certificate at {where} is not trusted: {exc.verify_message} "
                f"(CA file {config.ca}: {_subjects(config)})"
            )
        except ssl.SSLError as exc:
            return (
                f"the daemon at {where} refused our client certificate: {exc.reason} "
                f"({_client(config)})"
            )
        except OSError as exc:
            return f"TLS with {where} failed: {exc.strerror or exc}"
        finally:
            sock.close()
        if not answer:
            return (
                f"the daemon at {where} closed the connection after the TLS handshake: it does "
                f"not accept our client certificate ({_client(config)})"
            )
        return None
    return f"nothing accepts connections at {config.address} ({'; '.join(refused)})"


def _client(config: ClientConfig) -> str:
    try:
        cert = _load_certs(config.cert, "client certificate")[0]
    except (TlsConfigError, IndexError):
        return str(config.cert)
    issuer = cert.issuer.rfc4514_string()
    cas = {c.subject.rfc4514_string() for c in _load_certs(config.ca, "CA file")}
    note = "" if issuer in cas else f", not by the CA in {config.ca}"
    return f"{config.cert} is issued by {issuer!r}{note}"


def _subjects(config: ClientConfig) -> str:
    names = [c.subject.rfc4514_string() for c in _load_certs(config.ca, "CA file")]
    return ", ".join(repr(n) for n in names)


def _read(path: object, what: str) -> bytes:
    try:
        with open(str(path), "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise TlsConfigError(f"{what} {path}: {exc.strerror or exc}") from None


def _load_certs(path: object, what: str) -> list[x509.Certificate]:
    data = _read(path, what)
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TlsConfigError(f"{what} {path} is not a PEM certificate") from None


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise TlsConfigError(f"bad signerd address {address!r}: want HOST:PORT")
    return host.strip("[]"), int(port)
