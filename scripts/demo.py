"""The `make run` demo: one key per algorithm in the token, a TUF payload signed and verified.

Everything goes through the running daemon over mutual TLS, as any client would.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

import grpc
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from grpc_health.v1 import health_pb2, health_pb2_grpc
from securesystemslib.formats import encode_canonical
from securesystemslib.signer import Signature

from signer_client import ClientConfig, SignerClient
from signer_client.client import tuf_key

ALGORITHMS = ["ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ed25519", "rsassa-pss-sha256"]


def wait_serving(client: SignerClient, timeout: float = 60.0) -> None:
    stub = health_pb2_grpc.HealthStub(client.channel)
    deadline = time.monotonic() + timeout
    while True:
        try:
            status = stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status
            if status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass
        if time.monotonic() > deadline:
            sys.exit("signerd did not become healthy; see its log")
        time.sleep(0.2)


def verify_with_cryptography(pem: str, scheme: str, signature: bytes, data: bytes) -> None:
    public = load_pem_public_key(pem.encode())
    if isinstance(public, ec.EllipticCurvePublicKey):
        digest = hashes.SHA256() if scheme.endswith("256") else hashes.SHA384()
        public.verify(signature, data, ec.ECDSA(digest))
    elif isinstance(public, ed25519.Ed25519PublicKey):
        public.verify(signature, data)
    elif isinstance(public, rsa.RSAPublicKey):
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO)
        public.verify(signature, data, pss, hashes.SHA256())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--client-config", required=True)
    parser.add_argument("--run-dir", default=".run")
    args = parser.parse_args()
    client = SignerClient(ClientConfig.from_file(Path(args.client_config)))
    wait_serving(client)
    print(f"signerd is serving on {client.config.address} (mutual TLS, client: demo)")

    existing = {k.label: k for k in client.list_keys(role="targets", state="active")}
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    signed = {
        "_type": "targets",
        "spec_version": "1.0.31",
        "version": int(time.time()),
        "expires": (now + dt.timedelta(days=30)).isoformat().replace("+00:00", "Z"),
        "targets": {},
    }
    payload = encode_canonical(signed).encode()  # type: ignore[union-attr]
    print(f"payload: canonical JSON of a targets 'signed' section, {len(payload)} bytes\n")
    for algorithm in ALGORITHMS:
        label = f"demo-{algorithm}"
        key = existing.get(label)
        action = "reused "
        if key is None:
            started = time.perf_counter()
            key = client.create_key(label, algorithm, role="targets", repository="demo")
            action = f"created in {time.perf_counter() - started:.2f}s"
        response = client.sign(key.key_id, payload)
        tuf_key(key).verify_signature(Signature(key.key_id, response.signature.hex()), payload)
        verify_with_cryptography(key.public_key_pem, key.scheme, response.signature, payload)
        print(
            f"  {algorithm:20} key {key.key_id[:16]}… {action:16} "
            f"signature {len(response.signature):3} bytes, verified (sslib + cryptography)"
        )
    print(
        "\nThe private keys never left the SoftHSM token (sensitive, non-extractable).\n"
        f"Try:  {Path(sys.executable).parent / 'signerd'} keys list "
        f"--client-config {args.run_dir}/client-admin.toml\n"
        "Stop: make stop"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
