"""The daemon CLI's small promises: --version, and dev-pki saying what it did."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509

from harness import signerd

ROOT = Path(__file__).resolve().parent.parent


def dns_names(path: Path) -> list[str]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return list(san.get_values_for_type(x509.DNSName))


def test_version() -> None:
    done = signerd("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("signerd ") and done.stdout.strip() != "signerd"


def test_dev_pki_says_what_it_did_with_server_names(tmp_path: Path) -> None:
    out = tmp_path / "pki"
    first = signerd("dev-pki", "--out", str(out), "--client", "admin")
    assert first.returncode == 0, first.stderr
    assert "created a CA" in first.stdout and "issued server.pem for localhost" in first.stdout
    ca = (out / "ca.pem").read_bytes()

    again = signerd("dev-pki", "--out", str(out), "--server-name", "signerd.example.org")
    assert again.returncode == 0, again.stderr
    assert "issued server.pem again for signerd.example.org" in again.stdout, again.stdout
    assert "it was for localhost" in again.stdout
    assert dns_names(out / "server.pem") == ["signerd.example.org"]
    assert (out / "ca.pem").read_bytes() == ca  # same CA: existing clients keep working
    assert "kept client-admin.pem" in again.stdout

    same = signerd("dev-pki", "--out", str(out), "--server-name", "signerd.example.org")
    assert "kept server.pem (for signerd.example.org)" in same.stdout, same.stdout
