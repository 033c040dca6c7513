"""``signerd serve``: the supervisor of the worker processes, and the daemon's entry point.

The supervisor only supervises: it loads the configuration, validates the policy file,
starts ``workers`` processes (each a new interpreter, ``python -m signer.worker``: never
forked, since each opens the token itself and no process may fork after C_Initialize),
restarts those that die, forwards signals and, with ``[metrics] listen``, serves the
workers' metrics. It keeps the last good policy and CRL for workers restarted while
either file is broken. It imports nothing else: no gRPC, no PKCS#11, no cryptography, no
storage or signing code (those are the workers', in signer/server.py, imported in the
worker process only), and no multiprocessing (whose spawn start method would add a
resource-tracker process). docs/performance.md ("Idle memory") has what that saves;
tests/test_memory.py keeps it so.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from signer.config import SignerConfig, ensure_state_dir, load_config
from signer.errors import ConfigError
from signer.process import EXIT_CONFIG, EXIT_CRASH, configure_logging, raise_open_files_limit
from signer.worker import command as worker_command

if TYPE_CHECKING:
    from signer.metrics import MetricsListener

log = logging.getLogger(__name__)

LAST_GOOD_POLICY = "policy.last-good.toml"  # in the state dir, kept by the supervisor
LAST_GOOD_CRL = "crl.last-good"  # likewise ([tls] crl, PEM or DER as the file is)
CRL_CHECK_SECONDS = 60


def keep_good_policy(config: SignerConfig) -> Path | None:
    """Validate the policy file and keep its text as the last good policy (0600, written
    atomically in the state dir); workers started while the file is broken use it.

    Raises ConfigError when the file does not load: at start the daemon refuses to run,
    on SIGHUP the caller keeps the previous copy."""

    def check(data: bytes) -> None:
        from signer.policy.file import FilePolicy

        FilePolicy.from_bytes(data, str(config.policy.file))  # all or nothing

    return _keep_good(config.state.dir / LAST_GOOD_POLICY, config.policy.file, "policy file", check)


def keep_good_crl(config: SignerConfig) -> Path | None:
    """Validate the CRL (``[tls] crl``) and keep its bytes as the last good CRL (0600,
    written atomically in the state dir); workers started while the file is broken use it.

    The check is ``signer.identity``'s, run in a child interpreter (``python -m
    signer.identity``, the bytes on its stdin): reading a CRL takes cryptography, which
    the supervisor never imports. Raises ConfigError when the CRL cannot be used: at start
    the daemon refuses to run, on SIGHUP the caller keeps the previous copy."""
    crl = config.tls.crl

    def check(data: bytes) -> None:
        argv = [sys.executable, "-m", "signer.identity", str(crl), str(config.tls.ca)]
        try:
            done = subprocess.run(
                argv, input=data, capture_output=True, timeout=CRL_CHECK_SECONDS, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ConfigError(f"cannot check the CRL {crl}: {exc}") from exc
        if done.returncode != 0:
            reason = done.stderr.decode("utf-8", "replace").strip()
            raise ConfigError(reason or f"the CRL {crl} cannot be used (check: {done.returncode})")

    return _keep_good(config.state.dir / LAST_GOOD_CRL, crl, "the CRL", check)


def _keep_good(
    kept: Path, source: Path | None, what: str, check: Callable[[bytes], None]
) -> Path | None:
    """Read ``source``, ``check`` its bytes (ConfigError if unusable), keep them as
    ``kept``: the copy is the very file checked. With nothing configured, no copy is left
    behind either."""
    if source is None:
        kept.unlink(missing_ok=True)
        return None
    try:
        content = source.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {source}: {exc}") from exc
    check(content)
    _keep(kept, content)
    return kept


def _keep(kept: Path, content: bytes) -> None:
    """Write ``kept`` atomically, readable by the daemon's user only."""
    tmp = kept.with_name(f".{kept.name}.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, kept)
    finally:
        tmp.unlink(missing_ok=True)


class Supervisor:
    """Runs ``workers`` worker processes, restarts those that die, forwards signals.

    Signal handlers only queue the signal; the loop acts on it, so a handler never races
    the loop over the process table. Whatever happens, the loop ends by stopping and
    reaping every worker (no worker outlives a crashed supervisor).
    """

    def __init__(self, config_path: Path, config: SignerConfig) -> None:
        self.config_path = config_path
        self.config = config
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.started: dict[int, float] = {}
        self.signals: deque[int] = deque()
        self.wake = threading.Event()
        self.policy_fallback: Path | None = None
        self.crl_fallback: Path | None = None
        self.metrics_dir: Path | None = None  # the workers' metric files ([metrics])
        self.metrics_listener: MetricsListener | None = None

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.signals.append(signum)
        self.wake.set()

    def start(self, index: int) -> None:
        fallback = str(self.policy_fallback) if self.policy_fallback else None
        crl = str(self.crl_fallback) if self.crl_fallback else None
        argv = worker_command(str(self.config_path), index, os.getpid(), fallback, crl)
        # Its output is ours (the log); its environment too ([metrics] names the directory
        # there); nothing else: no other descriptor, no stdin.
        self.procs[index] = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
        self.started[index] = time.monotonic()

    def send(self, signum: int) -> None:
        """Signal every live worker; one that already exited is simply skipped (and
        reaped: ``send_signal`` polls first, so a reused pid is never signalled)."""
        for proc in self.procs.values():
            proc.send_signal(signum)

    def reload(self) -> None:
        try:
            self.policy_fallback = keep_good_policy(self.config)
        except ConfigError as exc:
            log.error("%s; workers keep the last good policy", exc)
        try:
            self.crl_fallback = keep_good_crl(self.config)
        except ConfigError as exc:
            log.error("%s; workers keep the last good CRL", exc)
        self.send(signal.SIGHUP)

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        try:
            self.policy_fallback = keep_good_policy(self.config)
            self.crl_fallback = keep_good_crl(self.config)
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
                if proc.poll() is None:
                    continue
                if proc.returncode == EXIT_CONFIG:
                    log.error("worker %d cannot start (configuration); stopping", index)
                    return EXIT_CONFIG
                if time.monotonic() - self.started[index] < 1.0:
                    continue  # at most one restart a second: a crash loop must not spin
                log.error("worker %d exited with %s; restarting it", index, proc.returncode)
                self.forget_metrics(proc.pid)
                self.start(index)

    def start_metrics(self) -> None:
        """With ``[metrics] listen``: the workers' value directory (named in the
        environment they inherit, so before any starts) and the listener serving it
        (prometheus_client is imported then, and only then)."""
        address = self.config.metrics.address
        if address is None:
            return
        from signer.metrics import prepare_directory, serve_workers

        self.metrics_dir = prepare_directory(self.config.state.dir)
        self.metrics_listener = serve_workers(address, self.metrics_dir)

    def forget_metrics(self, pid: int | None) -> None:
        """A worker exited: its live gauges (token state, queue depth...) go with it."""
        if self.metrics_dir is not None and pid is not None:
            from signer.metrics import worker_exited

            worker_exited(pid, self.metrics_dir)

    def stop_all(self) -> None:
        """SIGTERM, the grace period (+5 s), then SIGKILL for any worker still there."""
        self.send(signal.SIGTERM)
        deadline = time.monotonic() + self.config.server.grace_seconds + 5
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass  # killed below
        for index, proc in self.procs.items():
            if proc.poll() is None:
                log.error("worker %d did not stop in time; killing it", index)
                proc.kill()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    log.error("worker %d (pid %d) did not die in 5 s", index, proc.pid)


def serve(config_path: Path) -> int:
    """Run the daemon: in this process for one worker, else supervise worker processes.

    Exit status: 0 after SIGTERM/SIGINT, EXIT_CONFIG (2) for a configuration error,
    EXIT_CRASH (1) when the supervisor itself failed."""
    config = load_config(config_path)
    raise_open_files_limit()  # inherited by the workers
    if config.server.workers <= 1:
        from signer.server import run_worker

        run_worker(str(config_path), 0, reuse_port=False)  # its Daemon makes the state dir
        return 0
    configure_logging(None, config_path)
    ensure_state_dir(config.state.dir)  # after the logging set-up: it may warn
    return Supervisor(config_path, config).run()
