"""The client installs alone: its wheel, in a fresh virtual environment, brings none of the
daemon's libraries and imports no daemon module; and no client module names one.

Wheels of signer-api (api/) and signer-client (clients/) are built from copies of their
folders; pip finds every other requirement in the indexes its configuration names.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DAEMON_ONLY = {
    "python-pkcs11",
    "uvloop",
    "sqlite-utils",
    "psycopg",
    "psycopg-binary",
    "psycopg-pool",
}
NO_DAEMON_MODULE = (
    "import signer_client, signer_client.repo, signer_client.trust, signer_client.repo_cli, "
    "signer_client.trust.cli, sys; "
    "daemon = [m for m in sys.modules if m == 'signer' or m.startswith('signer.')]; "
    "assert not daemon, daemon"
)


def run(*argv: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    result = subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"{argv}:\n{result.stdout}\n{result.stderr}"
    return result


def test_the_client_wheel_installs_without_the_daemon(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    for folder in ("api", "clients"):  # copies: a build leaves build/ and *.egg-info behind
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("build"))
    run(
        sys.executable,
        *("-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", wheels),
        tmp_path / "api",
        tmp_path / "clients",
    )
    for wheel in wheels.glob("*.whl"):  # the licence travels with each distribution
        with zipfile.ZipFile(wheel) as archive:
            names = archive.namelist()
            metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA")))
        assert b"License-Expression: Apache-2.0" in metadata, wheel.name
        assert any(n.endswith("licenses/LICENSE") for n in names), wheel.name
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    python, pip = venv / "bin" / "python", venv / "bin" / "pip"
    run(pip, "install", "-q", "--find-links", wheels, "signer-client")

    listed = run(pip, "list", "--format=freeze").stdout
    installed = {line.split("==")[0].lower().replace("_", "-") for line in listed.splitlines()}
    assert {"signer-client", "signer-api", "grpcio", "tuf"} <= installed
    assert not installed & DAEMON_ONLY, installed & DAEMON_ONLY
    assert "tuf-hsm-signer" not in installed

    run(python, "-c", NO_DAEMON_MODULE, cwd=tmp_path)  # cwd: not the checkout
    assert "usage: tuf-repo" in run(venv / "bin" / "tuf-repo", "--help").stdout
    assert "usage: signer-trust" in run(venv / "bin" / "signer-trust", "--help").stdout


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_no_client_module_imports_the_daemon() -> None:
    """Static, so that a daemon import in a rarely run branch is caught too."""
    offenders = {
        str(path.relative_to(ROOT)): sorted(
            m for m in imported_modules(path) if m == "signer" or m.startswith("signer.")
        )
        for path in sorted((ROOT / "clients").rglob("*.py"))
    }
    assert {k: v for k, v in offenders.items() if v} == {}
    api = {m for p in (ROOT / "api").rglob("*.py") for m in imported_modules(p)}
    assert not {m for m in api if m == "signer" or m.startswith("signer.")}


# The daemon's own client-side commands (``signerd keys ...``, ``signerd request ...``,
# ``signerd policy explain --key``) are mTLS clients and use signer_client: the daemon
# distribution depends on signer-client, one way. Nothing that serves requests does.
CLIENT_COMMANDS = {"signer/cli.py", "signer/quorum_cli.py", "signer/policy/cli.py"}


def test_the_daemon_uses_the_client_only_in_its_client_side_commands() -> None:
    users = {
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / "signer").rglob("*.py"))
        if any(
            m == "signer_client" or m.startswith("signer_client.") for m in imported_modules(path)
        )
        or re.search(r"(?<![\w.])_client\(", path.read_text())
    }
    assert users <= CLIENT_COMMANDS, users - CLIENT_COMMANDS
