"""A worker: the gRPC server (mutual TLS only, health, reflection, graceful stop).

Throughput comes from several worker processes sharing the port (SO_REUSEPORT), each
opening the token itself after it starts (never fork after C_Initialize: workers are
spawned, not forked). Their supervisor (signer/supervisor.py) never imports this module:
it loads neither gRPC nor the PKCS#11 module.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import sys
from collections.abc import Coroutine
from concurrent import futures
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from signer.app import SignerApp
from signer.config import ServerConfig, SignerConfig, TlsConfig, ensure_state_dir, load_config
from signer.errors import ConfigError, SignerError
from signer.metrics import MetricsListener, PrometheusMetrics, observer_for
from signer.process import (
    EXIT_CONFIG,
    EXIT_CRASH,
    configure_logging,
    pin_to_cpu,
    raise_open_files_limit,
)
from signer.service.health import ExplainedHealth
from signer.service.keys import KeyServicer
from signer.service.registration import add_service
from signer.service.signing import SigningServicer
from signer_api.v1 import signer_pb2

log = logging.getLogger(__name__)

PARENT_POLL_SECONDS = 0.5

SERVICE_NAMES = [
    signer_pb2.DESCRIPTOR.services_by_name["KeyService"].full_name,
    signer_pb2.DESCRIPTOR.services_by_name["SigningService"].full_name,
]


def transport_options(server: ServerConfig, reuse_port: bool) -> list[tuple[str, int]]:
    """gRPC core channel arguments: message size, streams and connection lifetimes.

    The receive limit follows max_payload_bytes / max_batch_items (signer/config.py), so
    an oversize message is refused by gRPC before it is buffered. A connection that never
    completes its TLS handshake (a silent TCP connect) is closed after
    handshake_timeout_seconds, an idle one after idle_timeout_seconds: neither can hold a
    file descriptor for long. Keepalive pings find peers that vanished.
    """
    return [
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        ("grpc.max_receive_message_length", server.max_message_bytes),
        # Answers are ours (ListKeys may be long): only the receive side needs a tight bound.
        ("grpc.max_send_message_length", max(64 * 1024 * 1024, server.max_message_bytes)),
        ("grpc.max_concurrent_streams", server.max_concurrent_streams),
        ("grpc.server_handshake_timeout_ms", int(server.handshake_timeout_seconds * 1000)),
        ("grpc.max_connection_idle_ms", int(server.idle_timeout_seconds * 1000)),
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ]


def server_credentials(tls: TlsConfig) -> grpc.ServerCredentials:
    """Mutual TLS: a client certificate chaining to the configured CA is required."""
    try:
        key, cert, ca = tls.key.read_bytes(), tls.cert.read_bytes(), tls.ca.read_bytes()
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
        ensure_state_dir(config.state.dir)
        self.metrics = observer_for(config.metrics)
        self.metrics_listener: MetricsListener | None = None
        self.app = SignerApp(config, metrics=self.metrics)
        self.health = ExplainedHealth(self._unhealthy_because)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._state_ok = True  # the shared state reachable (always, for SQLite)
        self._state_watch: asyncio.Task[None] | None = None
        threads = int(os.environ.get("SIGNER_RPC_THREADS", "8"))
        self.server = grpc.aio.server(
            migration_thread_pool=futures.ThreadPoolExecutor(threads, thread_name_prefix="rpc"),
            options=transport_options(config.server, reuse_port),
            # Calls beyond this get RESOURCE_EXHAUSTED at once: with the receive limit, a
            # bound on the memory that requests (even unauthorised ones) can pin.
            maximum_concurrent_rpcs=config.server.max_concurrent_rpcs,
        )
        services = signer_pb2.DESCRIPTOR.services_by_name
        keys = KeyServicer(self.app.keys, self.app.certificates)
        add_service(self.server, keys, services["KeyService"])
        add_service(
            self.server,
            SigningServicer(self.app.pipeline, self.app.quorum, config.server.max_batch_items),
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
        listen = config.server.listen
        self.port = self.server.add_secure_port(listen, server_credentials(config.tls))
        if not self.port:
            raise ConfigError(f"cannot listen on {listen}")
        address = config.metrics.address
        if not reuse_port and address and isinstance(self.metrics, PrometheusMetrics):
            # Alone (no supervisor): serve our own values; a supervisor serves its workers'.
            self.metrics_listener = MetricsListener(address, self.metrics.registry)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.app.token.on_health_change(self._health_changed)
        try:
            self.app.open()
        except SignerError as exc:
            log.error("%s; serving NOT_SERVING until the token is back", exc)
            self.app.token._mark_broken(exc)  # the healer retries with backoff
        await self._set_health(self.app.token.healthy)
        if self.app.state.name != "sqlite":  # a shared database can go away: watch it
            self._state_watch = asyncio.get_running_loop().create_task(self._watch_state())
        await self.server.start()
        listen = self.config.server.listen
        log.info("listening on %s (port %d), mutual TLS required", listen, self.port)

    def report_mismatches(self) -> None:
        try:
            for mismatch in self.app.check():
                log.warning("registry/token mismatch: %s", mismatch)
        except SignerError as exc:
            log.warning("start-up check skipped: %s", exc)

    async def stop(self) -> None:
        """Finish in-flight requests (up to the grace period), then close the token."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.config.server.grace_seconds)
        self.app.close()
        if self.metrics_listener is not None:
            self.metrics_listener.close()

    def _unhealthy_because(self) -> str | None:
        """Why health says NOT_SERVING (for its trailing metadata), if it does."""
        fault = self.app.token.fault
        if fault is not None:
            return fault
        if not self._state_ok:
            return f"the shared state ({self.app.state.name}) is unreachable"
        return None

    def _health_changed(self, healthy: bool) -> None:
        """Called from the token's threads: hand over to the event loop."""
        loop = self._loop
        healthy = healthy and self._state_ok
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(lambda: loop.create_task(self._set_health(healthy)))

    async def _watch_state(self) -> None:
        """NOT_SERVING while the shared state is unreachable; SERVING again once it is
        back (the token permitting): the pool reconnects, nothing restarts."""
        while True:
            ok = await asyncio.to_thread(self.app.state.healthy)
            if ok != self._state_ok:
                self._state_ok = ok
                await self._set_health(ok and self.app.token.healthy)
            await asyncio.sleep(0.5)

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


PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Make this worker go when its supervisor goes, even by SIGKILL: a worker left
    serving beside a newly started daemon would keep an old policy on the same port.

    Linux delivers SIGTERM on the parent's death (PR_SET_PDEATHSIG); everywhere the
    worker also polls its parent (``watch_parent``). If the parent is already gone
    (it died before the prctl took effect), exit at once."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
                log.warning("prctl(PR_SET_PDEATHSIG): errno %d", ctypes.get_errno())
        except (OSError, AttributeError) as exc:
            log.warning("prctl unavailable (%s); polling the supervisor instead", exc)
    if os.getppid() != parent_pid:
        raise SystemExit(EXIT_CRASH)


async def watch_parent(parent_pid: int, stop: asyncio.Event) -> None:
    """The portable half of ``die_with_parent``: a reparented worker stops serving."""
    while not stop.is_set():
        if os.getppid() != parent_pid:
            log.error("the supervisor (pid %d) is gone; stopping", parent_pid)
            stop.set()
            return
        await asyncio.sleep(PARENT_POLL_SECONDS)


def run_worker(
    config_path: str,
    index: int,
    reuse_port: bool,
    parent_pid: int | None = None,
    policy_fallback: str | None = None,
    crl_fallback: str | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT. Runs in its own (spawned) process, or in the parent.

    ``policy_fallback`` and ``crl_fallback``: the last good policy and CRL the supervisor
    kept, enforced if the configured file is broken as this worker starts."""
    configure_logging(index if reuse_port else None, config_path)
    if parent_pid is not None:
        die_with_parent(parent_pid)
    raise_open_files_limit()
    run_event_loop(
        _serve(config_path, index, reuse_port, parent_pid, policy_fallback, crl_fallback)
    )


def run_event_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop when it is installed: ~15% less CPU per RPC than asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


async def _serve(
    config_path: str,
    index: int,
    reuse_port: bool,
    parent_pid: int | None = None,
    policy_fallback: str | None = None,
    crl_fallback: str | None = None,
) -> None:
    # The asyncio server must be made inside the loop that runs it.
    try:
        config = load_config(Path(config_path))
        if policy_fallback is not None:
            config = replace(config, policy_fallback=Path(policy_fallback))
        if crl_fallback is not None:
            config = replace(config, crl_fallback=Path(crl_fallback))
        if config.server.pin_workers and config.server.workers > 1:
            pin_to_cpu(index)
        daemon = Daemon(config, reuse_port)
    except ConfigError as exc:
        log.error("%s", exc)
        raise SystemExit(EXIT_CONFIG) from exc
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, daemon.app.reload)
    watcher = None
    if parent_pid is not None:
        watcher = loop.create_task(watch_parent(parent_pid, stop))
    await daemon.start()
    if index == 0:
        await asyncio.to_thread(daemon.report_mismatches)
    await stop.wait()
    log.info("stopping: finishing in-flight requests")
    await daemon.stop()
    if watcher is not None:
        watcher.cancel()
