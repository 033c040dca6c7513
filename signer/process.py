"""What the supervisor and its workers share: exit statuses, logging, the open-files limit,
CPU affinity.

Imported by the supervisor, so it loads no gRPC, token or signing code (signer/supervisor.py).
"""

from __future__ import annotations

import logging
import os
import resource
from pathlib import Path

from signer.config import load_config
from signer.errors import ConfigError

log = logging.getLogger(__name__)

# Exit statuses of `signerd serve` (and of a worker, to its supervisor).
EXIT_CONFIG = 2  # the configuration is wrong (as for any signerd command): restarting won't help
EXIT_CRASH = 1  # something broke: a supervisor restarts such a worker


def configure_logging(worker: int | None, config_path: str | Path | None = None) -> None:
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


def pin_to_cpu(index: int) -> int | None:
    """Keep worker ``index`` on one of the CPUs it may use (the ``index``-th, round robin):
    its event loop, its audit writer and gRPC's threads then share one CPU's caches and
    are not moved between CPUs ([server] pin_workers). Call it before the worker starts
    its threads (they inherit it); threads already running are moved too. Returns the
    CPU, or None where the system cannot pin (not Linux)."""
    if not hasattr(os, "sched_getaffinity"):
        log.warning("pin_workers: CPU affinity is not supported here; not pinned")
        return None
    cpus = sorted(os.sched_getaffinity(0))
    cpu = cpus[index % len(cpus)]
    for task in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(task), {cpu})
        except OSError:  # a thread that has just ended
            pass
    log.info("worker %d pinned to CPU %d", index, cpu)
    return cpu
