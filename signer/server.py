"""The gRPC server: mutual TLS only, health, reflection, worker processes, graceful stop.

Throughput comes from several worker processes sharing the port (SO_REUSEPORT), each
opening the token itself after it starts (never fork after C_Initialize: workers are
spawned, not forked). The parent only supervises: it never loads the PKCS#11 module.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Coroutine
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from signer.app import SignerApp
from signer.config import SignerConfig, load_config
from signer.errors import ConfigError, SignerError
from signer.service.keys import KeyServicer
from signer.service.registration import add_service
from signer.service.signing import SigningServicer
from signer.v1 import signer_pb2

log = logging.getLogger(__name__)

EXIT_CONFIG = 78  # EX_CONFIG: a worker cannot start; restarting it would not help

SERVICE_NAMES = [
    signer_pb2.DESCRIPTOR.services_by_name["KeyService"].full_name,
    signer_pb2.DESCRIPTOR.services_by_name["SigningService"].full_name,
]


def server_credentials(config: SignerConfig) -> grpc.ServerCredentials:
    """Mutual TLS: a client certificate chaining to the configured CA is required."""
    try:
        key, cert, ca = config.key.read_bytes(), config.cert.read_bytes(), config.ca.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read TLS material: {exc}") from exc
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=True
    )


class Daemon:
    """One serving process: the app, its asyncio gRPC server and its health reporting.

    Signing handlers are coroutines on the event loop (no thread hop on the hot path);
    administrative handlers are plain functions run in the server's thread pool.
    """

    extra_service_names: list[str]
    health_names: list[str]

    def __init__(self, config: SignerConfig, reuse_port: bool) -> None:
        self.config = config
        self.extra_service_names = []
        self.health_names = []
        self.app = SignerApp(config)
        self.health = health.aio.HealthServicer()
        self._loop: asyncio.AbstractEventLoop | None = None
        options = [
            ("grpc.so_reuseport", 1 if reuse_port else 0),
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ]
        threads = int(os.environ.get("SIGNER_RPC_THREADS", "8"))
        self.server = grpc.aio.server(
            migration_thread_pool=futures.ThreadPoolExecutor(threads, thread_name_prefix="rpc"),
            options=options,
        )
        services = signer_pb2.DESCRIPTOR.services_by_name
        add_service(self.server, KeyServicer(self.app.keys), services["KeyService"])
        add_service(
            self.server,
            SigningServicer(self.app.pipeline, self.app.quorum, config.max_batch_items),
            services["SigningService"],
        )
        for extension in extensions():
            extension(self)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [
                *SERVICE_NAMES,
                *self.extra_service_names,
                health.SERVICE_NAME,
                reflection.SERVICE_NAME,
            ],
            self.server,
        )
        self.port = self.server.add_secure_port(config.listen, server_credentials(config))
        if not self.port:
            raise ConfigError(f"cannot listen on {config.listen}")

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.app.token.on_health_change(self._health_changed)
        try:
            self.app.open()
        except SignerError as exc:
            log.error("%s; serving NOT_SERVING until the token is back", exc)
            self.app.token._mark_broken(exc)  # the healer retries with backoff
        await self._set_health(self.app.token.healthy)
        await self.server.start()
        log.info("listening on %s (port %d), mutual TLS required", self.config.listen, self.port)

    def report_mismatches(self) -> None:
        try:
            for mismatch in self.app.check():
                log.warning("registry/token mismatch: %s", mismatch)
        except SignerError as exc:
            log.warning("start-up check skipped: %s", exc)

    async def stop(self) -> None:
        """Finish in-flight requests (up to the grace period), then close the token."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.config.grace_seconds)
        self.app.close()

    def _health_changed(self, healthy: bool) -> None:
        """Called from the token's threads: hand over to the event loop."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(lambda: loop.create_task(self._set_health(healthy)))

    async def _set_health(self, healthy: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if healthy
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ["", *SERVICE_NAMES, *self.health_names]:
            await self.health.set(name, status)


def extensions() -> list:
    """Optional services mounted on the same server (e.g. the notary-signer API)."""
    found = []
    try:
        from signer.notary.service import mount as mount_notary
    except ImportError:
        pass
    else:
        found.append(mount_notary)
    return found


def _configure_logging(worker: int | None) -> None:
    tag = f"worker {worker}" if worker is not None else "signerd"
    logging.basicConfig(
        level=os.environ.get("SIGNER_LOG_LEVEL", "INFO"),
        format=f"%(asctime)s {tag} %(levelname)s %(name)s: %(message)s",
    )


def run_worker(config_path: str, index: int, reuse_port: bool) -> None:
    """Serve until SIGTERM/SIGINT. Runs in its own (spawned) process, or in the parent."""
    _configure_logging(index if reuse_port else None)
    run_event_loop(_serve(config_path, index, reuse_port))


def run_event_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop when it is installed: ~15% less CPU per RPC than asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


async def _serve(config_path: str, index: int, reuse_port: bool) -> None:
    # The asyncio server must be made inside the loop that runs it.
    try:
        daemon = Daemon(load_config(Path(config_path)), reuse_port)
    except ConfigError as exc:
        log.error("%s", exc)
        raise SystemExit(EXIT_CONFIG) from exc
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, daemon.app.reload)
    await daemon.start()
    if index == 0:
        await asyncio.to_thread(daemon.report_mismatches)
    await stop.wait()
    log.info("stopping: finishing in-flight requests")
    await daemon.stop()


def serve(config_path: Path) -> int:
    """Run the daemon: in this process for one worker, else supervise spawned workers."""
    config = load_config(config_path)
    if config.workers <= 1:
        run_worker(str(config_path), 0, reuse_port=False)
        return 0
    _configure_logging(None)
    ctx = multiprocessing.get_context("spawn")
    stopping = threading.Event()
    procs: dict[int, multiprocessing.process.BaseProcess] = {}

    def start(index: int) -> None:
        proc = ctx.Process(
            target=run_worker, args=(str(config_path), index, True), name=f"signerd-{index}"
        )
        proc.start()
        procs[index] = proc

    def forward(signum: int, _frame: object) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping.set()
        for proc in procs.values():
            if proc.pid:
                os.kill(proc.pid, signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    for index in range(config.workers):
        start(index)
    log.info("started %d workers on %s", config.workers, config.listen)
    while not stopping.is_set():
        for index, proc in list(procs.items()):
            if not proc.is_alive() and not stopping.is_set():
                if proc.exitcode == EXIT_CONFIG:
                    log.error("worker %d cannot start (configuration); stopping", index)
                    stopping.set()
                    forward(signal.SIGTERM, None)
                    break
                log.error("worker %d exited with %s; restarting it", index, proc.exitcode)
                start(index)
        stopping.wait(0.5)
    deadline = time.monotonic() + config.grace_seconds + 5
    for proc in procs.values():
        proc.join(max(0.1, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
    return 0
