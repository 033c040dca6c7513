"""Prometheus metrics: what the daemon counts as it works, and the listener serving them.

Workers record, the supervisor serves. Each worker writes its values to files in a
directory the supervisor made and named in ``PROMETHEUS_MULTIPROC_DIR`` before starting
it (prometheus_client's multi-process mode: the variable must be set before the first
metric exists, so only a spawned worker can use it); the supervisor's listener reads
them all at each scrape (``MultiProcessCollector``), and forgets a dead worker's gauges.
A single worker (``workers = 1``: no supervisor) serves its own values.

Recording costs next to nothing on the signing path: a hook adds to plain numbers kept
per label set (a multi-process value write would cost a microsecond or two each), and a
thread per worker (``Reporter``) hands them to prometheus_client once a second. With
metrics off (no ``[metrics] listen``) every hook is ``Observer``'s no-op and
prometheus_client is never imported.

The names, labels and meanings are listed in docs/operating.md ("Metrics").
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from signer.errors import (
    ConfigError,
    PermissionDenied,
    ResourceExhausted,
    SignerError,
    Unauthenticated,
)

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

ALLOWED, DENIED, FAILED = "allowed", "denied", "failed"
FLUSH_SECONDS = 1.0  # how often a worker hands its recorded values to prometheus_client


def outcome_of(error: SignerError) -> str:
    """Refused for who asked or how often (identity, policy, rate limit) is denied; any
    other error failed."""
    refused = isinstance(error, PermissionDenied | Unauthenticated | ResourceExhausted)
    return DENIED if refused else FAILED


class Observer:
    """What the daemon reports as it works; this one records nothing (metrics off, tools,
    tests). ``started`` values are ``time.perf_counter()`` readings."""

    enabled = False

    def answered(self, rpc: str, started: float) -> None:
        """An RPC returned OK."""

    def refused(self, rpc: str, error: SignerError, started: float) -> None:
        """An RPC ended with ``error``'s status."""

    def signed(self, algorithm: str, role: str, count: int = 1) -> None:
        """The token made ``count`` signatures that were audited and handed out."""

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


class _Counted:
    """Increments of one counter child, added up here until the next hand-over."""

    __slots__ = ("child", "n")

    def __init__(self, child: Any) -> None:
        self.child = child
        self.n = 0

    def take(self) -> int:
        n, self.n = self.n, 0
        return n

    def give(self, n: int) -> None:
        self.child.inc(n)


class _Observed:
    """Observations of one histogram child: count per bucket and their sum, added up
    here until the next hand-over."""

    __slots__ = ("buckets", "child", "total")

    def __init__(self, child: Any, bounds: tuple[float, ...]) -> None:
        self.child = child
        self.buckets = [0] * (len(bounds) + 1)  # the last one: +Inf
        self.total = 0.0

    def take(self) -> tuple[list[int], float] | None:
        if not any(self.buckets):
            return None
        taken = self.buckets, self.total
        self.buckets, self.total = [0] * len(self.buckets), 0.0
        return taken

    def give(self, taken: tuple[list[int], float]) -> None:
        # prometheus_client's observe() writes the sum and a bucket per observation; here
        # one write per bucket for them all (its buckets are per bound, not cumulative).
        buckets, total = taken
        self.child._sum.inc(total)
        for value, n in zip(self.child._buckets, buckets, strict=True):
            if n:
                value.inc(n)


class PrometheusMetrics(Observer):
    """The daemon's metrics in a registry of their own (several apps may live in one
    process, e.g. in tests). In a worker of a supervisor the values go to the shared
    directory as well; the supervisor serves those, not this registry.

    A hook only adds to plain numbers here, under one lock (a fraction of a microsecond;
    a multi-process value write costs one or two): ``flush`` hands the sums to
    prometheus_client, once a second from the ``Reporter``, so a scrape may lag that much.
    Rare events (token state, heal attempts) are written at once."""

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
        self._lock = threading.Lock()
        self._cells: list[_Counted | _Observed] = []  # everything flush hands over
        self._ok: dict[str, tuple[_Counted, _Observed]] = {}
        self._latencies: dict[str, _Observed] = {}
        self._errors: dict[tuple[str, str, str], tuple[_Counted, _Observed]] = {}
        self._signed: dict[tuple[str, str], _Counted] = {}
        self._limited: dict[str, _Counted] = {}
        for reason in ("RATE_LIMITED", "BATCH_OVER_BURST"):  # exposed from the start, as 0
            self._limited[reason] = self._counted(self._rate_limited.labels(reason))
        self._commits = self._observed(self._commit, COMMIT_BUCKETS)
        self._waiting: int | None = None  # queue depth after the last commit, not yet set

    def _counted(self, child: Any) -> _Counted:
        cell = _Counted(child)
        self._cells.append(cell)
        return cell

    def _observed(self, child: Any, bounds: tuple[float, ...]) -> _Observed:
        cell = _Observed(child, bounds)
        self._cells.append(cell)
        return cell

    def _timed(self, rpc: str, outcome: str, code: str) -> tuple[_Counted, _Observed]:
        """The cells of one (rpc, outcome, code): its count and its RPC's latency (one
        histogram per RPC, shared by its outcomes). Called under the lock."""
        latency = self._latencies.get(rpc)
        if latency is None:
            latency = self._latencies[rpc] = self._observed(
                self._latency.labels(rpc), LATENCY_BUCKETS
            )
        return self._counted(self._requests.labels(rpc, outcome, code)), latency

    def answered(self, rpc: str, started: float) -> None:
        elapsed = time.perf_counter() - started
        index = bisect_left(LATENCY_BUCKETS, elapsed)  # the first bound >= elapsed
        with self._lock:
            cells = self._ok.get(rpc)
            if cells is None:
                cells = self._ok[rpc] = self._timed(rpc, ALLOWED, "OK")
            cells[0].n += 1
            latency = cells[1]
            latency.buckets[index] += 1
            latency.total += elapsed

    def refused(self, rpc: str, error: SignerError, started: float) -> None:
        elapsed = time.perf_counter() - started
        index = bisect_left(LATENCY_BUCKETS, elapsed)
        key = (rpc, outcome_of(error), error.code.name)
        with self._lock:
            cells = self._errors.get(key)
            if cells is None:
                cells = self._errors[key] = self._timed(*key)
            cells[0].n += 1
            latency = cells[1]
            latency.buckets[index] += 1
            latency.total += elapsed

    def signed(self, algorithm: str, role: str, count: int = 1) -> None:
        with self._lock:
            cell = self._signed.get((algorithm, role))
            if cell is None:
                cell = self._signed[(algorithm, role)] = self._counted(
                    self._signatures.labels(algorithm, role)
                )
            cell.n += count

    def rate_limited(self, reason: str) -> None:
        with self._lock:
            cell = self._limited.get(reason)
            if cell is None:
                cell = self._limited[reason] = self._counted(self._rate_limited.labels(reason))
            cell.n += 1

    def audit_committed(self, seconds: float, waiting: int) -> None:
        index = bisect_left(COMMIT_BUCKETS, seconds)
        with self._lock:
            self._commits.buckets[index] += 1
            self._commits.total += seconds
            self._waiting = waiting

    def token_state(self, healthy: bool) -> None:
        self._token.set(1 if healthy else 0)

    def heal_attempt(self, ok: bool) -> None:
        self._heal_children[ok].inc()

    def state_counts(self, keys: Mapping[str, int], quorum: Mapping[str, int]) -> None:
        for state, n in keys.items():
            self._keys.labels(state).set(n)
        for state, n in quorum.items():
            self._quorum.labels(state).set(n)

    def flush(self) -> None:
        """Hand what the hooks added up to prometheus_client (the values a scrape reads)."""
        with self._lock:  # hooks wait for this copy only, never for the writes below
            taken = [(cell, cell.take()) for cell in self._cells]
            waiting, self._waiting = self._waiting, None
        for cell, pending in taken:
            if pending:
                cell.give(pending)  # type: ignore[arg-type]  # what that cell took
        if waiting is not None:
            self._queue.set(waiting)


def observer_for(config: MetricsConfig) -> Observer:
    """Metrics when a listener is configured, else the no-op observer."""
    return PrometheusMetrics() if config.address is not None else NO_METRICS


class Reporter:
    """The metrics' thread in each worker, off the request path: hands the recorded
    values over every ``FLUSH_SECONDS`` (and once more at ``stop``), and reads the counts
    that live in the shared state (keys, quorum requests) every ``interval`` seconds.
    Every worker samples; the newest sample wins (``livemostrecent``)."""

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
        if not isinstance(self.metrics, PrometheusMetrics) or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="metrics", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def sample(self) -> None:
        self.metrics.state_counts(self.keys(), self.quorum())

    def _run(self) -> None:
        assert isinstance(self.metrics, PrometheusMetrics)
        flush = self.metrics.flush
        next_sample = 0.0
        while True:
            if time.monotonic() >= next_sample:
                try:
                    self.sample()
                except Exception as exc:  # the state is down: the gauges keep their values
                    log.warning("metrics: cannot read key and quorum counts: %s", exc)
                next_sample = time.monotonic() + self.interval
            try:
                flush()
            except Exception:  # e.g. the value directory is gone: keep serving
                log.exception("metrics: cannot hand over the values")
            if self._stop.wait(min(FLUSH_SECONDS, self.interval)):
                flush()  # the last requests' counts, before the worker exits
                return


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
