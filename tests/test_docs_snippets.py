"""Every TOML snippet in docs/ loads: a policy as a policy, a client config as a client
config, a daemon config (or a section of one, on top of a minimal config) as a config.

Documentation that no longer loads is a bug users copy; this keeps it honest.
"""

from __future__ import annotations

import re
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
