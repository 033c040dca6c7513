"""Shared fixtures. See harness.py: everything here is real (token, TLS, daemon)."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Daemon, running_daemon


def pytest_configure(config: pytest.Config) -> None:
    if shutil.which("softhsm2-util") is None:
        raise pytest.UsageError(
            "softhsm2 is not installed: run `make deps` (apt-get install softhsm2)"
        )


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon per test module, any authenticated client allowed (no policy file)."""
    with running_daemon(tmp_path_factory.mktemp("signerd"), clients=["admin", "alice"]) as d:
        yield d


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[object]:
    """A throw-away PostgreSQL cluster for the session (see pg_harness.py)."""
    import pg_harness

    if not pg_harness.available():
        pytest.skip("PostgreSQL 15 is not installed: run `make deps`")
    with pg_harness.running_cluster() as cluster:
        yield cluster
