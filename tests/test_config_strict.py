"""The daemon's config file: a typo is an error naming the file and the key, never ignored."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

from signer.config import (
    KNOWN_SETTINGS,
    SECTIONS,
    AuditConfig,
    MetricsConfig,
    NotaryConfig,
    PolicyConfig,
    ServerConfig,
    SignerConfig,
    StateConfig,
    TlsConfig,
    TokenConfig,
    load_config,
)
from signer.errors import ConfigError
from signer.logs import LogConfig

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
    assert config.server.workers == 2 and config.token.label == "tuf-signer"


# -- one typed tree --------------------------------------------------------------------------

FULL = """
[server]
listen = "0.0.0.0:7443"
workers = 3
max_payload_bytes = 1024
max_batch_items = 8
grace_seconds = 0
max_concurrent_rpcs = 4
max_concurrent_streams = 5
idle_timeout_seconds = 30
handshake_timeout_seconds = 2.5
pin_workers = true

[tls]
ca = "ca.pem"
cert = "/etc/signer/server.pem"
key = "server-key.pem"
crl = "revoked.crl"

[token]
uri = "pkcs11:token=from-uri;serial=1234;module-path=/opt/p11.so"
pin_file = "pin"
pin_env = "MY_PIN"
probe_interval = 1
hang_seconds = 0.5

[state]
dir = "var/state"
url = "postgresql://signer@db.example/signer"
password_file = "/run/secrets/db"
replica = "signer-a"

[policy]
file = "policy.toml"

[log]
format = "json"
requests = false

[audit]
checkpoint_entries = 50
checkpoint_seconds = 1.5
anchor_file = "/var/log/anchors.jsonl"
anchor_command = ["logger", "-t", "signerd"]

[notary]
enabled = false
roles = ["timestamp"]
retire_unused_days = 30
retire_idle_repositories = true
retire_interval_seconds = 60

[metrics]
listen = "127.0.0.1:9464"
refresh_seconds = 2
"""


def test_every_section_is_a_frozen_typed_dataclass(tmp_path: Path) -> None:
    assert set(tomllib.loads(FULL)) == set(SECTIONS)  # a new section is tested here too
    config = load_config(write(tmp_path, FULL))
    base = tmp_path.resolve()
    for name, cls in SECTIONS.items():
        section = getattr(config, name)
        assert type(section) is cls, name
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen, name  # type: ignore[attr-defined]
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(section, dataclasses.fields(cls)[0].name, None)
        assert KNOWN_SETTINGS[name] >= {f.name for f in dataclasses.fields(cls)}, name
    assert config.server == ServerConfig(
        "0.0.0.0:7443", 3, 1024, 8, 0.0, 4, 5, 30.0, 2.5, True
    )  # integers given for seconds are floats
    assert isinstance(config.server.idle_timeout_seconds, float)
    assert config.tls == TlsConfig(
        base / "ca.pem",
        Path("/etc/signer/server.pem"),
        base / "server-key.pem",
        base / "revoked.crl",
    )
    assert config.token == TokenConfig(
        "/opt/p11.so", "from-uri", "1234", "MY_PIN", base / "pin", 1.0, 0.5
    )
    assert config.state == StateConfig(
        base / "var/state",
        "postgresql://signer@db.example/signer",
        "SIGNER_DB_PASSWORD",
        Path("/run/secrets/db"),
        "signer-a",
    )
    assert config.policy == PolicyConfig(base / "policy.toml")
    assert config.log == LogConfig("json", False)
    assert config.audit == AuditConfig(
        50, 1.5, Path("/var/log/anchors.jsonl"), ("logger", "-t", "signerd")
    )
    assert config.notary == NotaryConfig(False, ("timestamp",), 30.0, True, 60.0)
    assert config.metrics == MetricsConfig("127.0.0.1:9464", 2.0)


def test_absent_sections_take_their_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE))
    assert config.server == ServerConfig()
    assert config.state == StateConfig(dir=tmp_path.resolve() / "state")
    assert (config.policy, config.log) == (PolicyConfig(), LogConfig())
    assert (config.audit, config.notary) == (AuditConfig(), NotaryConfig())
    assert config.metrics == MetricsConfig() and config.metrics.address is None


def test_the_config_has_no_untyped_extra(tmp_path: Path) -> None:
    """Every section is a field of its own type; nothing is handed on as a raw dict."""
    names = {f.name for f in dataclasses.fields(SignerConfig)}
    assert "extra" not in names
    assert set(SECTIONS) <= names
    config = load_config(write(tmp_path, BASE))
    assert not any(isinstance(getattr(config, n), dict) for n in names)


# section, key, value (TOML), what the message says is expected
WRONG = [
    ("server", "listen", "7443", "a non-empty string"),
    ("server", "listen", '""', "a non-empty string"),
    ("server", "workers", '"2"', "an integer >= 1"),
    ("server", "workers", "0", "an integer >= 1"),
    ("server", "workers", "2.0", "an integer >= 1"),
    ("server", "workers", "true", "an integer >= 1"),
    ("server", "max_payload_bytes", "-1", "an integer >= 1"),
    ("server", "max_batch_items", "0", "an integer >= 1"),
    ("server", "grace_seconds", "-1", "a number >= 0"),
    ("server", "max_concurrent_rpcs", "0", "an integer >= 1"),
    ("server", "max_concurrent_streams", "'x'", "an integer >= 1"),
    ("server", "idle_timeout_seconds", "0", "a number > 0"),
    ("server", "handshake_timeout_seconds", "'10'", "a number > 0"),
    ("server", "pin_workers", "1", "true or false"),
    ("tls", "ca", "1", "a path"),
    ("tls", "cert", '""', "a path"),
    ("tls", "crl", "[]", "a path"),
    ("token", "module", "1", "a string"),
    ("token", "label", "false", "a string"),
    ("token", "uri", "'token=x'", "a pkcs11: URI"),
    ("token", "serial", "1234", "a string"),
    ("token", "pin_env", '""', "a non-empty string"),
    ("token", "pin_file", "0o600", "a path"),
    ("token", "probe_interval", "0", "a number > 0"),
    ("token", "hang_seconds", "'5'", "a number > 0"),
    ("state", "dir", "7", "a path"),
    ("state", "url", "'mysql://db'", "use postgresql://"),
    ("state", "password_env", "1", "a non-empty string"),
    ("state", "password_file", "true", "a path"),
    ("state", "replica", "1", "a string"),
    ("policy", "file", "{}", "a path"),
    ("log", "format", "'yaml'", '"text" or "json"'),
    ("log", "requests", "'yes'", "true or false"),
    ("audit", "checkpoint_entries", "'x'", "an integer >= 1"),
    ("audit", "checkpoint_entries", "0", "an integer >= 1"),
    ("audit", "checkpoint_seconds", "0", "a number > 0"),
    ("audit", "anchor_file", "'anchors.jsonl'", "an absolute path"),
    ("audit", "anchor_command", "'logger -t signerd'", "a list of non-empty strings"),
    ("audit", "anchor_command", '["logger", 1]', "a list of non-empty strings"),
    ("notary", "enabled", "'no'", "true or false"),
    ("notary", "roles", "'timestamp'", "a list of non-empty strings"),
    ("notary", "roles", '[""]', "a list of non-empty strings"),
    ("notary", "retire_unused_days", "-1", "a number >= 0"),
    ("notary", "retire_idle_repositories", "1", "true or false"),
    ("notary", "retire_interval_seconds", "0", "a number > 0"),
    ("metrics", "listen", "9464", "a string"),
    ("metrics", "listen", "'9464'", '"host:port"'),
    ("metrics", "refresh_seconds", "0", "a number > 0"),
]


def _with(section: str, key: str, value: str) -> str:
    """BASE with ``key = value`` in ``[section]`` (the key replaced if BASE has it)."""
    lines = [
        line
        for line in BASE.splitlines()
        if not (section in ("tls", "token") and line.startswith(f"{key} ="))
    ]
    text = "\n".join(lines) + "\n"
    header = f"[{section}]\n"
    if header in text:
        return text.replace(header, f"{header}{key} = {value}\n")
    return f"{text}\n{header}{key} = {value}\n"


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"), WRONG, ids=[f"{s}.{k}={v}" for s, k, v, _ in WRONG]
)
def test_a_wrong_value_is_refused_naming_file_key_and_what_was_expected(
    tmp_path: Path, section: str, key: str, value: str, expected: str
) -> None:
    path = write(tmp_path, _with(section, key, value))
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    message = str(refused.value)
    assert message.startswith(f"{path}: [{section}] {key} "), message
    assert expected in message, message
    assert "\n" not in message


def test_every_key_of_every_section_is_type_checked(tmp_path: Path) -> None:
    """A table where any setting belongs is refused, key by key: no key is read unchecked."""
    for section, known in KNOWN_SETTINGS.items():
        for key in sorted(known - {"pin", "password"}):
            path = write(tmp_path, _with(section, key, "{ a = 1 }"))
            with pytest.raises(ConfigError) as refused:
                load_config(path)
            message = str(refused.value)
            assert message.startswith(f"{path}: [{section}] {key} "), message
            assert "got a table" in message, message


def test_a_missing_tls_file_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, BASE.replace('cert = "server.pem"\n', ""))
    with pytest.raises(ConfigError, match=r"signer\.toml: \[tls\] cert is missing"):
        load_config(path)
    path = write(tmp_path, '[token]\nlabel = "t"\n')
    with pytest.raises(ConfigError, match=r"\[tls\] ca is missing"):
        load_config(path)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('[token]\nlabel = "t"\npin = "1234"\n', "[token] pin is not allowed"),
        ('[state]\npassword = "x"\n', "[state] password is not allowed"),
        ("[state]\nurl = 'postgresql://u:pw@db/signer'\n", "no database password"),
        ("[token]\nlabel = ''\n", "name the token"),
        ("[server\n", "cannot read config"),
    ],
)
def test_secrets_and_broken_files_are_refused_naming_the_file(
    tmp_path: Path, text: str, named: str
) -> None:
    base = BASE.replace('[token]\nlabel = "tuf-signer"\n', "") if "[token]" in text else BASE
    path = write(tmp_path, base + text)
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert named in str(refused.value) and str(path) in str(refused.value), refused.value
