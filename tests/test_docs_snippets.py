"""Every TOML snippet in docs/ loads: a policy as a policy, a client config as a client
config, a daemon config (or a section of one, on top of a minimal config) as a config.

Documentation that no longer loads is a bug users copy; this keeps it honest.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from signer.config import load_config
from signer.policy.file import FilePolicy
from signer_client.config import ClientConfig

DOCS = Path(__file__).resolve().parent.parent / "docs"
# What a snippet of a daemon config leaves out, added so it loads on its own.
MINIMAL = {
    "tls": '[tls]\nca = "ca.pem"\ncert = "s.pem"\nkey = "k.pem"\n',
    "token": '[token]\nlabel = "t"\n',
}
POLICY_SECTIONS = {"rules", "groups", "rate_limits", "tuf", "quorum"}


def snippets() -> list[tuple[str, int, str]]:
    found = []
    for doc in sorted(DOCS.glob("*.md")):
        text = doc.read_text()
        for match in re.finditer(r"```toml\n(.*?)```", text, re.S):
            line = text[: match.start()].count("\n") + 1
            found.append((doc.name, line, match.group(1)))
    return found


SNIPPETS = snippets()


def test_there_are_snippets() -> None:
    assert len(SNIPPETS) >= 10


@pytest.mark.parametrize(
    ("doc", "line", "block"), SNIPPETS, ids=[f"{d}:{n}" for d, n, _ in SNIPPETS]
)
def test_snippet_loads(doc: str, line: int, block: str, tmp_path: Path) -> None:
    data = tomllib.loads(block)
    where = f"docs/{doc}:{line}"
    path = tmp_path / "snippet.toml"
    if set(data) & POLICY_SECTIONS:
        FilePolicy.parse(block, where)
    elif "address" in data:
        path.write_text(block)
        ClientConfig.from_file(path)
    else:
        missing = "".join(text for name, text in MINIMAL.items() if name not in data)
        path.write_text(missing + "\n" + block)
        load_config(path)


def unit_files() -> list[tuple[str, int, str]]:
    """The systemd units in docs/ (``ini`` blocks that start with their path)."""
    found = []
    for doc in sorted(DOCS.glob("*.md")):
        text = doc.read_text()
        for match in re.finditer(
            r"```ini\n(# /etc/systemd/system/\S+\.service\n.*?)```", text, re.S
        ):
            line = text[: match.start()].count("\n") + 1
            found.append((doc.name, line, match.group(1)))
    return found


@pytest.mark.parametrize(("doc", "line", "unit"), unit_files())
def test_a_documented_systemd_unit_is_valid(doc: str, line: int, unit: str, tmp_path: Path) -> None:
    """systemd reads only whole-line comments: a `# ...` after a value becomes part of the
    value (an unparsable timeout, a boolean that is ignored). `systemd-analyze verify`
    reports every directive it cannot parse; the unit must give it nothing to say."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze (Debian's systemd package) is needed to check the unit"
    signerd = Path(sys.executable).with_name("signerd")
    assert signerd.exists(), signerd
    path = tmp_path / "signerd.service"
    path.write_text(unit.replace("/opt/signerd/.venv/bin/signerd", str(signerd)))
    done = subprocess.run(
        [analyze, "verify", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and not done.stderr.strip(), f"{doc}:{line}:\n{done.stderr}"
