"""The clients' configuration: every mistake is one clear line naming the file and the key.

The daemon client's TOML file (read by the library, ``tuf-repo`` and ``signer-trust``),
its environment variables, and ``tuf-repo``'s settings file: a missing key, a wrong type
or an unknown key is an error naming both, never a raw KeyError or a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from signer_client.config import ClientConfig, ClientConfigError
from signer_client.repo.errors import RepositoryError
from signer_client.repo.store import CONFIG_NAME, RepoConfig, RepoStore
from signer_client.repo_cli import main as tuf_repo
from signer_client.trust.cli import main as signer_trust

GOOD = {"address": '"signer:7443"', "ca": '"ca.pem"', "cert": '"c.pem"', "key": '"k.pem"'}


def client_file(tmp_path: Path, **values: str | None) -> Path:
    """A client config: GOOD with ``values`` replacing (None: leaving out) its keys."""
    merged = {**GOOD, **values}
    path = tmp_path / "client.toml"
    path.write_text("".join(f"{k} = {v}\n" for k, v in merged.items() if v is not None))
    return path


@pytest.mark.parametrize("key", sorted(GOOD))
def test_a_missing_key_is_named(tmp_path: Path, key: str) -> None:
    path = client_file(tmp_path, **{key: None})
    with pytest.raises(ClientConfigError, match=f"^client config {path}: {key} is missing$"):
        ClientConfig.from_file(path)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("address", "7443", "a non-empty string"),
        ("address", '""', "a non-empty string"),
        ("ca", "true", "a non-empty string"),
        ("cert", "[]", "a non-empty string"),
        ("key", "{ path = 'k' }", "a non-empty string"),
        ("timeout", '"10"', "a number > 0"),
        ("timeout", "0", "a number > 0"),
        ("timeout", "-1.5", "a number > 0"),
        ("retries", "1.5", "an integer >= 0"),
        ("retries", "-1", "an integer >= 0"),
        ("retries", "true", "an integer >= 0"),
        ("server_name", "5", "a non-empty string"),
    ],
)
def test_a_wrong_type_is_named_with_what_was_expected(
    tmp_path: Path, key: str, value: str, expected: str
) -> None:
    path = client_file(tmp_path, **{key: value})
    with pytest.raises(ClientConfigError) as refused:
        ClientConfig.from_file(path)
    assert str(refused.value).startswith(f"client config {path}: {key} must be {expected}, not ")


def test_numbers_may_be_integers_and_defaults_apply(tmp_path: Path) -> None:
    config = ClientConfig.from_file(client_file(tmp_path, timeout="3"))
    assert config.timeout == 3.0 and isinstance(config.timeout, float)
    assert (config.retries, config.server_name) == (4, None)


@pytest.mark.parametrize("key", ["cafile", "tls", "Address"])
def test_an_unknown_key_is_named_with_the_known_ones(tmp_path: Path, key: str) -> None:
    path = client_file(tmp_path, **{key: '"x"'})
    with pytest.raises(ClientConfigError) as refused:
        ClientConfig.from_file(path)
    message = str(refused.value)
    assert message.startswith(f"client config {path}: unknown field(s) {key}; known: address")


def test_an_unreadable_or_broken_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ClientConfigError, match=f"client config {missing}: No such file"):
        ClientConfig.from_file(missing)
    broken = tmp_path / "broken.toml"
    broken.write_text('address = "x\n')
    with pytest.raises(ClientConfigError, match=f"client config {broken}: not valid TOML"):
        ClientConfig.from_file(broken)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(ClientConfigError, match=f"client config {binary}: not valid TOML"):
        ClientConfig.from_file(binary)


def test_a_missing_variable_is_named_not_a_key_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SIGNER_CLIENT_CONFIG", raising=False)
    for name in ("SIGNER_ADDRESS", "SIGNER_CA", "SIGNER_CERT", "SIGNER_KEY"):
        monkeypatch.setenv(name, "x")
    monkeypatch.delenv("SIGNER_KEY")
    with pytest.raises(ClientConfigError, match="set SIGNER_CLIENT_CONFIG or SIGNER_KEY"):
        ClientConfig.from_env()


def test_signer_trust_says_which_file_and_key_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = client_file(tmp_path, cert="5")
    argv = ["--signer-config", str(path), "-d", str(tmp_path / "trust"), "init", "example.com/app"]
    assert signer_trust(argv) == 1
    err = capsys.readouterr().err
    assert (
        err
        == f"signer-trust: error: client config {path}: cert must be a non-empty string, not 5\n"
    )


def test_tuf_repo_says_which_file_and_key_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = client_file(tmp_path, retries='"4"')
    monkeypatch.setenv("SIGNER_CLIENT_CONFIG", str(path))
    assert tuf_repo(["-C", str(tmp_path / "repo"), "init", "--create-keys"]) == 1
    err = capsys.readouterr().err
    assert err == (
        f"tuf-repo: error: client config {path}: retries must be an integer >= 0, not '4'\n"
    )


# -- tuf-repo.json, the repository's settings ------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ([], "must be a JSON object, got list"),
        ({"servr": "x"}, "unknown field(s) servr; known: expiry_seconds"),
        ({"server": 7443}, "server must be a string, got 7443"),
        ({"meta_length": "yes"}, "meta_length must be true or false, got 'yes'"),
        ({"meta_hashes": "sha256"}, "meta_hashes must be a list of strings"),
        ({"target_hashes": [256]}, "target_hashes must be a list of strings"),
        ({"expiry_seconds": {"root": "1y"}}, "expiry_seconds must map names to seconds"),
        ({"expiry_seconds": []}, "expiry_seconds must map names to seconds"),
        ({"key_uris": {"k": 1}}, "key_uris must map names to URI strings"),
        ({"version_floor": {"targets": True}}, "version_floor must map names to versions"),
    ],
)
def test_the_repository_settings_name_the_file_and_the_field(
    tmp_path: Path, settings: object, named: str
) -> None:
    (tmp_path / CONFIG_NAME).write_text(json.dumps(settings))
    with pytest.raises(RepositoryError) as refused:
        RepoStore(tmp_path).load_config()
    message = str(refused.value)
    assert message.startswith(f"{tmp_path / CONFIG_NAME}: not a valid tuf-repo settings file: ")
    assert named in message, message


def test_the_repository_settings_round_trip() -> None:
    config = RepoConfig(
        expiry_seconds={"root": 86400},
        key_uris={"k": "signer:k"},
        server="signer:7443",
        meta_length=True,
        meta_hashes=["sha256"],
        target_hashes=["sha256", "sha512"],
        version_floor={"targets": 3},
    )
    assert RepoConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert RepoConfig.from_dict({}) == RepoConfig()
