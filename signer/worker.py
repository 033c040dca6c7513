"""``python -m signer.worker``: one worker process, as its supervisor starts it.

The supervisor (signer/supervisor.py) executes a fresh interpreter per worker, never a
fork (no process may fork after C_Initialize, and the supervisor loads nothing a worker
could inherit); the worker then imports the serving code (signer/server.py) itself.
"""

from __future__ import annotations

import argparse
import sys


def command(
    config: str,
    index: int,
    supervisor: int,
    policy_fallback: str | None,
    crl_fallback: str | None = None,
) -> list[str]:
    """The command line that starts worker ``index`` of the supervisor with pid ``supervisor``."""
    argv = [sys.executable, "-m", "signer.worker", "--config", config, "--index", str(index)]
    argv += ["--supervisor", str(supervisor)]
    if policy_fallback is not None:
        argv += ["--policy-fallback", policy_fallback]
    if crl_fallback is not None:
        argv += ["--crl-fallback", crl_fallback]
    return argv


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="signer.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--supervisor", type=int, required=True, help="its pid: die with it")
    parser.add_argument("--policy-fallback", help="the last good policy, if the file is broken")
    parser.add_argument("--crl-fallback", help="the last good CRL, if the file is broken")
    args = parser.parse_args(argv)

    from signer.server import run_worker

    run_worker(
        args.config, args.index, True, args.supervisor, args.policy_fallback, args.crl_fallback
    )


if __name__ == "__main__":
    main()
