"""The gRPC server: mutual TLS only, health, reflection, worker processes, graceful stop.

Throughput comes from several worker processes sharing the port (SO_REUSEPORT), each
opening the token itself after it starts (never fork after C_Initialize: workers are
spawned, not forked). The parent only supervises: it never loads the PKCS#11 module.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import multiprocessing
import os
import resource
import signal
import sys
import threading
import time
from collections import deque
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
from signer.metrics import (
    MetricsListener,
    PrometheusMetrics,
    observer_for,
    prepare_directory,
    serve_workers,
    worker_exited,
)
from signer.service.keys import KeyServicer
from signer.service.registration import add_service
from signer.service.signing import SigningServicer
from signer_api.v1 import signer_pb2

log = logging.getLogger(__name__)

# Exit statuses of `signerd serve` (and of a worker, to its supervisor).
EXIT_CONFIG = 2  # the configuration is wrong (as for any signerd command): restarting won't help
EXIT_CRASH = 1  # something broke: a supervisor restarts such a worker

LAST_GOOD_POLICY = "policy.last-good.toml"  # in the state dir, kept by the supervisor
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
        self.health = health.aio.HealthServicer()
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


def _configure_logging(worker: int | None, config_path: str | Path | None = None) -> None:
    """Text or JSON lines ([log]); the level from SIGNER_LOG_LEVEL in any case."""
    from signer.logs import LogConfig, configure

    tag = f"worker {worker}" if worker is not None else "signerd"
    wanted = os.environ.get("SIGNER_LOG_LEVEL", "INFO").strip().upper()  # `info` works too
    level = logging.getLevelName(wanted)
    settings = LogConfig()
    if config_path is not None:
        try:
            settings = load_config(Path(config_path)).log
        except ConfigError:
            pass  # reported, in plain text, where the config is loaded for real
    configure(tag, level if isinstance(level, int) else logging.INFO, settings)
    if not isinstance(level, int):
        log.warning("SIGNER_LOG_LEVEL=%s is not a level; logging at INFO", wanted)


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit: each connection costs a descriptor,
    and at the usual soft limit of 1024 a thousand idle sockets would starve the token's
    own files and new clients. Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-files limit from %d: %s", soft, exc)
    return soft


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
) -> None:
    """Serve until SIGTERM/SIGINT. Runs in its own (spawned) process, or in the parent."""
    _configure_logging(index if reuse_port else None, config_path)
    if parent_pid is not None:
        die_with_parent(parent_pid)
    raise_open_files_limit()
    run_event_loop(_serve(config_path, index, reuse_port, parent_pid, policy_fallback))


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
) -> None:
    # The asyncio server must be made inside the loop that runs it.
    try:
        config = load_config(Path(config_path))
        if policy_fallback is not None:
            config = replace(config, policy_fallback=Path(policy_fallback))
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


def keep_good_policy(config: SignerConfig) -> Path | None:
    """Validate the policy file and keep its text as the last good policy (0600, written
    atomically in the state dir); workers started while the file is broken use it.

    Raises ConfigError when the file does not load: at start the daemon refuses to run,
    on SIGHUP the caller keeps the previous copy."""
    kept = config.state.dir / LAST_GOOD_POLICY
    policy_file = config.policy.file
    if policy_file is None:
        kept.unlink(missing_ok=True)
        return None
    from signer.policy.file import FilePolicy

    try:
        text = policy_file.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read policy file {policy_file}: {exc}") from exc
    FilePolicy.parse(text, str(policy_file))  # all or nothing: raises ConfigError
    tmp = kept.with_name(f".{kept.name}.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, kept)
    finally:
        tmp.unlink(missing_ok=True)
    return kept


class Supervisor:
    """Runs ``workers`` spawned processes, restarts those that die, forwards signals.

    Signal handlers only queue the signal; the loop acts on it, so a handler never races
    the loop over the process table. Whatever happens, the loop ends by stopping and
    reaping every worker (no worker outlives a crashed supervisor).
    """

    def __init__(self, config_path: Path, config: SignerConfig) -> None:
        self.config_path = config_path
        self.config = config
        self.ctx = multiprocessing.get_context("spawn")
        self.procs: dict[int, multiprocessing.process.BaseProcess] = {}
        self.started: dict[int, float] = {}
        self.signals: deque[int] = deque()
        self.wake = threading.Event()
        self.policy_fallback: Path | None = None
        self.metrics_dir: Path | None = None  # the workers' metric files ([metrics])
        self.metrics_listener: MetricsListener | None = None

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.signals.append(signum)
        self.wake.set()

    def start(self, index: int) -> None:
        fallback = str(self.policy_fallback) if self.policy_fallback else None
        proc = self.ctx.Process(
            target=run_worker,
            args=(str(self.config_path), index, True, os.getpid(), fallback),
            name=f"signerd-{index}",
        )
        proc.start()
        self.procs[index] = proc
        self.started[index] = time.monotonic()

    def send(self, signum: int) -> None:
        """Signal every live worker; one that already exited is simply skipped."""
        for proc in self.procs.values():
            if proc.pid is None or proc.exitcode is not None:
                continue
            try:
                os.kill(proc.pid, signum)
            except ProcessLookupError:
                pass  # exited since we looked: the loop restarts or reaps it

    def reload(self) -> None:
        try:
            self.policy_fallback = keep_good_policy(self.config)
        except ConfigError as exc:
            log.error("%s; workers keep the last good policy", exc)
        self.send(signal.SIGHUP)

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        try:
            self.policy_fallback = keep_good_policy(self.config)
            self.start_metrics()
            server = self.config.server
            for index in range(server.workers):
                self.start(index)
            log.info("started %d workers on %s", server.workers, server.listen)
            return self._loop()
        except ConfigError as exc:
            log.error("%s", exc)
            return EXIT_CONFIG
        except Exception:
            log.exception("supervisor failed; stopping the workers")
            return EXIT_CRASH
        finally:
            self.stop_all()
            if self.metrics_listener is not None:
                self.metrics_listener.close()
            # Stopped: a late signal must not kill the exit itself (Python restores the
            # default action of its handled signals while shutting down; SIG_IGN stays).
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, signal.SIG_IGN)

    def _loop(self) -> int:
        while True:
            self.wake.wait(0.5)
            self.wake.clear()
            while self.signals:
                signum = self.signals.popleft()
                if signum == signal.SIGHUP:
                    self.reload()
                else:
                    log.info("stopping %d workers", len(self.procs))
                    return 0
            for index, proc in list(self.procs.items()):
                if proc.is_alive():
                    continue
                if proc.exitcode == EXIT_CONFIG:
                    log.error("worker %d cannot start (configuration); stopping", index)
                    return EXIT_CONFIG
                if time.monotonic() - self.started[index] < 1.0:
                    continue  # at most one restart a second: a crash loop must not spin
                log.error("worker %d exited with %s; restarting it", index, proc.exitcode)
                self.forget_metrics(proc.pid)
                self.start(index)

    def start_metrics(self) -> None:
        """With ``[metrics] listen``: the workers' value directory (named in the
        environment they inherit, so before any starts) and the listener serving it."""
        address = self.config.metrics.address
        if address is None:
            return
        self.metrics_dir = prepare_directory(self.config.state.dir)
        self.metrics_listener = serve_workers(address, self.metrics_dir)

    def forget_metrics(self, pid: int | None) -> None:
        """A worker exited: its live gauges (token state, queue depth...) go with it."""
        if self.metrics_dir is not None and pid is not None:
            worker_exited(pid, self.metrics_dir)

    def stop_all(self) -> None:
        """SIGTERM, the grace period (+5 s), then SIGKILL for any worker still there."""
        self.send(signal.SIGTERM)
        deadline = time.monotonic() + self.config.server.grace_seconds + 5
        for proc in self.procs.values():
            proc.join(max(0.1, deadline - time.monotonic()))
        for proc in self.procs.values():
            if proc.is_alive():
                log.error("worker %s did not stop in time; killing it", proc.name)
                proc.kill()
                proc.join(5)


def serve(config_path: Path) -> int:
    """Run the daemon: in this process for one worker, else supervise spawned workers.

    Exit status: 0 after SIGTERM/SIGINT, EXIT_CONFIG (2) for a configuration error,
    EXIT_CRASH (1) when the supervisor itself failed."""
    config = load_config(config_path)
    ensure_state_dir(config.state.dir)
    raise_open_files_limit()  # inherited by the workers
    if config.server.workers <= 1:
        run_worker(str(config_path), 0, reuse_port=False)
        return 0
    _configure_logging(None, config_path)
    return Supervisor(config_path, config).run()
