"""The daemon's config file: a typo is an error naming the file and the key, never ignored."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from signer.config import load_config
from signer.errors import ConfigError

BASE = """
[tls]
ca = "ca.pem"
cert = "server.pem"
key = "server-key.pem"

[token]
label = "tuf-signer"
"""
DOCS = Path(__file__).resolve().parent.parent / "docs"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "signer.toml"
    path.write_text(text)
    return path


def test_the_base_config_loads(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE))
    assert config.token.label == "tuf-signer"


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ("[tsl]\nca = 'x'\n", "unknown section [tsl]"),
        ("[server]\nworker = 2\n", "unknown setting server.worker"),
        ("[server]\nnotary_listen = '127.0.0.1:7444'\n", "unknown setting server.notary_listen"),
        ("[state]\ndirectory = 'state'\n", "unknown setting state.directory"),
        ("[audit]\ncheckpoint_every = 10\n", "unknown setting audit.checkpoint_every"),
        ("[notary]\nenable = false\n", "unknown setting notary.enable"),
        ("policy = 'policy.toml'\n", "[policy] must be a table"),
    ],
)
def test_unknown_sections_and_keys_are_errors(tmp_path: Path, extra: str, named: str) -> None:
    text = BASE + extra if extra.startswith("[") else extra + BASE
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    message = str(refused.value)
    assert named in message and str(path) in message, message
    assert "\n" not in message


def test_a_typo_in_token_is_named_with_what_is_known(tmp_path: Path) -> None:
    path = write(tmp_path, BASE.replace('label = "tuf-signer"', 'label = "t"\npin_fille = "p"'))
    with pytest.raises(ConfigError, match=r"token\.pin_fille \(known: .*pin_file"):
        load_config(path)


def test_the_documented_config_loads(tmp_path: Path) -> None:
    """docs/operating.md's configuration file, as printed there."""
    text = (DOCS / "operating.md").read_text()
    block = re.search(r"## The configuration file.*?```toml\n(.*?)```", text, re.S)
    assert block is not None
    config = load_config(write(tmp_path, block.group(1)))
    assert config.workers == 2 and config.token.label == "tuf-signer"
