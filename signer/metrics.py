"""Prometheus metrics: what the daemon counts as it works, and the listener serving them.

Workers record, the supervisor serves. Each worker writes its values to files in a
directory the supervisor made and named in ``PROMETHEUS_MULTIPROC_DIR`` before starting
it (prometheus_client's multi-process mode: the variable must be set before the first
metric exists, so only a spawned worker can use it); the supervisor's listener reads
them all at each scrape (``MultiProcessCollector``), and forgets a dead worker's gauges.
A single worker (``workers = 1``: no supervisor) serves its own values.

Recording costs next to nothing on the signing path: a hook is one method call on label
children bound once and cached per label set. With metrics off (no ``[metrics] listen``)
every hook is ``Observer``'s no-op and prometheus_client is never imported.

The names, labels and meanings are listed in docs/operating.md ("Metrics").
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from signer.errors import ConfigError, PermissionDenied, ResourceExhausted, SignerError

if TYPE_CHECKING:
    from signer.config import MetricsConfig

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
METRICS_DIR = "metrics"  # in the state dir: the workers' value files, remade at each start

# Seconds. A unary Sign takes about a millisecond; a large batch or a slow HSM, seconds.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
# An audit commit is one fsync'd transaction (SQLite) or one round trip (PostgreSQL).
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)

ALLOWED, DENIED, FAILED = "allowed", "denied", "failed"  # as the audit log says


def outcome_of(error: SignerError) -> str:
    """A refusal (policy, rate limit) is denied, anything else failed: the audit's rule."""
    return DENIED if isinstance(error, PermissionDenied | ResourceExhausted) else FAILED


class Observer:
    """What the daemon reports as it works; this one records nothing (metrics off, tools,
    tests). ``started`` values are ``time.perf_counter()`` readings."""

    enabled = False

    def answered(self, rpc: str, started: float) -> None:
        """An RPC returned OK."""

    def refused(self, rpc: str, error: SignerError, started: float) -> None:
        """An RPC ended with ``error``'s status."""

    def signed(self, algorithm: str, role: str) -> None:
        """The token made a signature that was audited and handed out."""

    def rate_limited(self, reason: str) -> None:
        """A request refused by its rate limit (``reason``: the ErrorInfo reason)."""

    def audit_committed(self, seconds: float, waiting: int) -> None:
        """An audit commit took ``seconds``; ``waiting`` callers queued meanwhile."""

    def token_state(self, healthy: bool) -> None:
        """The token became usable, or not."""

    def heal_attempt(self, ok: bool) -> None:
        """The healer tried to re-open the token."""

    def state_counts(self, keys: Mapping[str, int], quorum: Mapping[str, int]) -> None:
        """Keys by state, open quorum requests by state (read from the shared state)."""


NO_METRICS = Observer()


class PrometheusMetrics(Observer):
    """The daemon's metrics in a registry of their own (several apps may live in one
    process, e.g. in tests). In a worker of a supervisor the values go to the shared
    directory as well; the supervisor serves those, not this registry."""

    enabled = True

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._requests = Counter(
            "signer_requests",
            "RPCs answered, by RPC, outcome (allowed, denied, failed) and status code.",
            ["rpc", "outcome", "code"],
            registry=r,
        )
        self._latency = Histogram(
            "signer_request_duration_seconds",
            "Time from an RPC's arrival at its handler to its answer, by RPC.",
            ["rpc"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._signatures = Counter(
            "signer_signatures",
            "Signatures handed out (audited), by key algorithm and key role.",
            ["algorithm", "role"],
            registry=r,
        )
        self._rate_limited = Counter(
            "signer_rate_limited",
            "Requests refused by a rate limit, by reason (RATE_LIMITED, BATCH_OVER_BURST).",
            ["reason"],
            registry=r,
        )
        self._commit = Histogram(
            "signer_audit_commit_duration_seconds",
            "Time of one audit group commit (many requests' entries, one transaction).",
            buckets=COMMIT_BUCKETS,
            registry=r,
        )
        self._queue = Gauge(
            "signer_audit_queue_depth",
            "Requests waiting for the next audit commit (summed over workers).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self._token = Gauge(
            "signer_token_up",
            "1 while the worker's token session is usable, 0 while it is down (per pid).",
            registry=r,
            multiprocess_mode="liveall",
        )
        self._heals = Counter(
            "signer_token_heal_attempts",
            "Re-opens of the token by the background healer, by result (ok, failed).",
            ["result"],
            registry=r,
        )
        self._keys = Gauge(
            "signer_keys",
            "Registered keys by state (active, retired, destroyed).",
            ["state"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self._quorum = Gauge(
            "signer_quorum_requests_open",
            "Unexpired quorum requests awaiting approvals (pending) or a signature (approved).",
            ["state"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self._token.set(0)
        self._heal_children = {True: self._heals.labels("ok"), False: self._heals.labels("failed")}
        self._ok: dict[str, tuple[Any, Any]] = {}
        self._errors: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self._signed: dict[tuple[str, str], Any] = {}

    def answered(self, rpc: str, started: float) -> None:
        elapsed = time.perf_counter() - started
        children = self._ok.get(rpc)
        if children is None:
            children = self._ok[rpc] = (
                self._requests.labels(rpc, ALLOWED, "OK"),
                self._latency.labels(rpc),
            )
        children[0].inc()
        children[1].observe(elapsed)

    def refused(self, rpc: str, error: SignerError, started: float) -> None:
        elapsed = time.perf_counter() - started
        key = (rpc, outcome_of(error), error.code.name)
        children = self._errors.get(key)
        if children is None:
            children = self._errors[key] = (self._requests.labels(*key), self._latency.labels(rpc))
        children[0].inc()
        children[1].observe(elapsed)

    def signed(self, algorithm: str, role: str) -> None:
        child = self._signed.get((algorithm, role))
        if child is None:
            child = self._signed[(algorithm, role)] = self._signatures.labels(algorithm, role)
        child.inc()

    def rate_limited(self, reason: str) -> None:
        self._rate_limited.labels(reason).inc()  # already the slow path: refused

    def audit_committed(self, seconds: float, waiting: int) -> None:
        self._commit.observe(seconds)
        self._queue.set(waiting)

    def token_state(self, healthy: bool) -> None:
        self._token.set(1 if healthy else 0)

    def heal_attempt(self, ok: bool) -> None:
        self._heal_children[ok].inc()

    def state_counts(self, keys: Mapping[str, int], quorum: Mapping[str, int]) -> None:
        for state, n in keys.items():
            self._keys.labels(state).set(n)
        for state, n in quorum.items():
            self._quorum.labels(state).set(n)


def observer_for(config: MetricsConfig) -> Observer:
    """Metrics when a listener is configured, else the no-op observer."""
    return PrometheusMetrics() if config.address is not None else NO_METRICS


class StateSampler:
    """Reads the counts that live in the shared state (keys, quorum requests) every
    ``interval`` seconds on a thread of its own, off the request path. Every worker
    samples; the newest sample wins (``livemostrecent``)."""

    def __init__(
        self,
        metrics: Observer,
        keys: Callable[[], Mapping[str, int]],
        quorum: Callable[[], Mapping[str, int]],
        interval: float,
    ) -> None:
        self.metrics = metrics
        self.keys = keys
        self.quorum = quorum
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if not self.metrics.enabled or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="metrics-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def sample(self) -> None:
        self.metrics.state_counts(self.keys(), self.quorum())

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample()
            except Exception as exc:  # the state is down: the gauges keep their last values
                log.warning("metrics: cannot read key and quorum counts: %s", exc)
            self._stop.wait(self.interval)


class MetricsListener:
    """The HTTP listener Prometheus scrapes (any path; ``/metrics`` by convention)."""

    def __init__(self, address: tuple[str, int], registry: Any) -> None:
        from prometheus_client import start_http_server

        host, port = address
        try:
            self.server, self.thread = start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port} for metrics: {exc}") from exc
        self.port = int(self.server.server_address[1])
        log.info("metrics on http://%s:%d/metrics", host, self.port)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def prepare_directory(state_dir: Path) -> Path:
    """The workers' value directory (0700, in the state dir), emptied of a previous run's
    files, and named in the environment the workers inherit. Call before any worker
    starts, and before prometheus_client is imported here."""
    path = state_dir / METRICS_DIR
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(mode=0o700)
    os.environ[MULTIPROC_ENV] = str(path)
    return path


def serve_workers(address: tuple[str, int], directory: Path) -> MetricsListener:
    """The supervisor's listener: every worker's values, summed per the metric's mode."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    return MetricsListener(address, registry)


def worker_exited(pid: int, directory: Path) -> None:
    """Drop a dead worker's live gauges (its counters stay: totals never go back)."""
    from prometheus_client.multiprocess import mark_process_dead

    mark_process_dead(pid, str(directory))
