"""The floor the benchmarks compare signerd with: a bare grpc.aio server.

Same mutual TLS (the dev PKI's server certificate, client certificates required) and the
same event loop as signerd's workers, one process, no token, policy or audit: what
Python's gRPC stack alone costs per request on this machine. Each benchmark brings the
servicer whose handlers answer at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc


def serve(pki: str, port: int, register: Callable[[grpc.aio.Server], None]) -> None:
    """Serve on 127.0.0.1:``port`` until killed; ``register`` adds the servicer."""

    async def run() -> None:
        server = grpc.aio.server()
        register(server)
        base = Path(pki)
        creds = grpc.ssl_server_credentials(
            [((base / "server-key.pem").read_bytes(), (base / "server.pem").read_bytes())],
            root_certificates=(base / "ca.pem").read_bytes(),
            require_client_auth=True,
        )
        server.add_secure_port(f"127.0.0.1:{port}", creds)
        await server.start()
        await server.wait_for_termination()

    try:  # the same event loop as signerd's workers
        import uvloop
    except ImportError:
        asyncio.run(run())
    else:
        uvloop.run(run())


@contextlib.contextmanager
def running(target: Callable[[str, int], None], pki: str, port: int) -> Iterator[int]:
    """``target(pki, port)`` (a module-level function calling ``serve``) in a process of
    its own, from when it accepts connections until the block ends; yields its pid."""
    proc = mp.get_context("spawn").Process(target=target, args=(pki, port))
    proc.start()
    try:
        deadline = time.monotonic() + 30
        while True:  # until it answers
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or not proc.is_alive():
                    raise SystemExit("the floor server did not start") from None
                time.sleep(0.1)
        assert proc.pid is not None
        yield proc.pid
    finally:
        proc.kill()
        proc.join()
