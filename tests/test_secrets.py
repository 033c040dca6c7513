"""Secrets stay private: no PIN on a command line, no loose PIN file, dev keys 0600 from
their first byte, a private state directory."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from harness import ROOT, Daemon, create_token, free_port
from signer.config import load_config
from signer.errors import ConfigError


def _sample_cmdlines(stop: threading.Event, seen: list[bytes]) -> None:
    """What any local user sees: every process's command line, sampled in a tight loop."""
    while not stop.is_set():
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                        seen.append(f.read())
                except OSError:
                    pass


def test_create_token_never_puts_a_pin_on_a_command_line(tmp_path: Path) -> None:
    pin, so_pin = "user-pin-Zq81x", "so-pin-Kw27v"
    env = dict(os.environ, SIGNER_PIN=pin, SIGNER_SO_PIN=so_pin)
    seen: list[bytes] = []
    stop = threading.Event()
    sampler = threading.Thread(target=_sample_cmdlines, args=(stop, seen), daemon=True)
    sampler.start()
    try:
        for i in range(3):  # creates two tokens, then finds the first one again
            label = "secret-a" if i != 1 else "secret-b"
            subprocess.run(
                [str(ROOT / "softhsm" / "create-token.sh"), str(tmp_path / "hsm"), label],
                env=env,
                check=True,
                capture_output=True,
            )
    finally:
        stop.set()
        sampler.join()
    assert any(b"init-token.py" in c for c in seen), "the sampler never saw the helper"
    leaked = [c for c in seen if pin.encode() in c or so_pin.encode() in c]
    assert not leaked, leaked[:1]
    # The token works with the PIN given by the environment.
    check = (
        "import pkcs11, sys; s = pkcs11.lib(sys.argv[1]).get_token(token_label=sys.argv[2])"
        ".open(user_pin=sys.argv[3]); s.close(); print('ok')"
    )
    conf = {"SOFTHSM2_CONF": str(tmp_path / "hsm" / "softhsm2.conf")}
    for label in ("secret-a", "secret-b"):
        out = subprocess.run(
            [sys.executable, "-c", check, "/usr/lib/softhsm/libsofthsm2.so", label, pin],
            env=dict(os.environ, **conf),
            capture_output=True,
            text=True,
        )
        assert out.stdout.strip() == "ok", out.stderr


def _config_with_pin_file(tmp_path: Path, mode: int) -> Path:
    pin = tmp_path / "pin"
    pin.write_text("s3cret\n")
    pin.chmod(mode)
    config = tmp_path / "signer.toml"
    config.write_text('[tls]\nca="ca"\ncert="c"\nkey="k"\n[token]\nlabel="t"\npin_file="pin"\n')
    return config


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o660])
def test_pin_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    token = load_config(_config_with_pin_file(tmp_path, mode)).token
    with pytest.raises(ConfigError) as info:
        token.read_pin()
    assert str(tmp_path / "pin") in str(info.value) and f"{mode:04o}" in str(info.value)


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_private_pin_file_is_read(tmp_path: Path, mode: int) -> None:
    assert load_config(_config_with_pin_file(tmp_path, mode)).token.read_pin() == "s3cret"


_WATCH_PKI = r"""
import json, os, sys
events = []
def hook(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        if str(args[0]).endswith("-key.pem"):
            events.append(["open", str(args[0]), args[1], args[2]])
    elif event == "os.chmod":
        events.append(["chmod", str(args[0]), args[1], None])
sys.addaudithook(hook)
os.umask(0)  # the most permissive umask: only an explicit mode protects the key
from signer.devpki import make_dev_pki
make_dev_pki(__import__("pathlib").Path(sys.argv[1]), ["admin", "ci.example.org"])
print(json.dumps(events))
"""


def test_dev_pki_keys_are_created_0600_by_the_open(tmp_path: Path) -> None:
    out = tmp_path / "pki"
    result = subprocess.run(
        [sys.executable, "-c", _WATCH_PKI, str(out)],
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ, PYTHONPATH=f"{ROOT}:{ROOT / 'clients'}"),
    )
    events = json.loads(result.stdout)
    keys = sorted(out.glob("*-key.pem"))
    assert len(keys) == 4  # CA, server, two clients
    for key in keys:
        assert key.stat().st_mode & 0o777 == 0o600, key
    opens = [e for e in events if e[0] == "open"]
    assert {e[1] for e in opens} == {str(k) for k in keys}
    for _, path, _, flags in opens:  # created by this very open, never an existing file
        assert flags & os.O_CREAT and flags & os.O_EXCL, path
    assert not [e for e in events if e[0] == "chmod"], "keys were chmod-ed after writing"


def test_left_over_key_file_is_replaced_not_reused(tmp_path: Path) -> None:
    """A key file someone else made (or linked) is replaced, never written into."""
    from signer.devpki import make_dev_pki

    out = tmp_path / "pki"
    out.mkdir()
    decoy = tmp_path / "decoy"
    decoy.write_text("")
    decoy.chmod(0o644)
    os.link(decoy, out / "ca-key.pem")  # a hard link another user could read through
    make_dev_pki(out, ["admin"])
    assert decoy.read_text() == "" and decoy.stat().st_mode & 0o777 == 0o644
    assert (out / "ca-key.pem").stat().st_mode & 0o777 == 0o600


def test_state_directory_is_created_0700(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        daemon = Daemon(root=tmp_path, port=free_port(), env=create_token(tmp_path / "hsm"))
        daemon.start()
    finally:
        os.umask(old)
    try:
        assert daemon.state.stat().st_mode & 0o777 == 0o700
        assert daemon.client().list_keys() == []
    finally:
        assert daemon.stop() == 0


def test_state_directory_writable_by_others_is_refused(tmp_path: Path) -> None:
    from signer.config import ensure_state_dir

    daemon = Daemon(root=tmp_path, port=free_port(), env=create_token(tmp_path / "hsm"))
    daemon.state.mkdir()
    daemon.state.chmod(0o777)
    daemon.start(wait=False)
    assert daemon.proc is not None and daemon.proc.wait(30) == 2, daemon.log()
    assert f"state directory {daemon.state} has mode 0777" in daemon.log()
    for mode in (0o770, 0o702, 0o757):
        daemon.state.chmod(mode)
        with pytest.raises(ConfigError, match=f"has mode {mode:04o}: it must not be writable"):
            ensure_state_dir(daemon.state)
        assert daemon.state.stat().st_mode & 0o777 == mode  # refused: left as it was


@pytest.mark.parametrize("mode", [0o750, 0o755, 0o711, 0o740, 0o704], ids=oct)
def test_a_readable_state_directory_is_tightened_to_0700(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: int
) -> None:
    """The state directory is 0700: group or other bits on the daemon user's own one are
    taken away (audit.db and keys.db in it may be readable), with a warning."""
    from signer.config import ensure_state_dir

    state = tmp_path / "state"
    state.mkdir()
    (state / "audit.db").write_bytes(b"")
    state.chmod(mode)
    with caplog.at_level(logging.WARNING, logger="signer.config"):
        assert ensure_state_dir(state) == state
    assert state.stat().st_mode & 0o777 == 0o700
    assert f"the state directory {state} had mode {mode:04o}: tightened to 0700" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="signer.config"):
        ensure_state_dir(state)  # 0700 already: nothing to say
    assert caplog.text == ""


@pytest.mark.parametrize("workers", [1, 2])
def test_the_daemon_tightens_its_state_directory(tmp_path: Path, workers: int) -> None:
    daemon = Daemon(
        root=tmp_path, port=free_port(), env=create_token(tmp_path / "hsm"), workers=workers
    )
    daemon.state.mkdir()
    daemon.state.chmod(0o755)
    daemon.start()
    try:
        assert daemon.state.stat().st_mode & 0o777 == 0o700
        # A log line of the daemon's own format (the logging is set up before the check).
        assert re.search(
            rf"signerd WARNING signer\.config: the state directory {re.escape(str(daemon.state))}"
            " had mode 0755",
            daemon.log(),
        ), daemon.log()
        assert daemon.client().list_keys() == []
    finally:
        assert daemon.stop() == 0


def test_a_state_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    from signer.config import ensure_state_dir

    if os.geteuid() == 0:
        state = tmp_path / "state"
        state.mkdir(mode=0o700)
        os.chown(state, 65534, 65534)  # nobody
        owner = 65534
    else:
        state, owner = Path("/"), 0  # root's: never this user's
    before = state.stat().st_mode & 0o777
    with pytest.raises(ConfigError, match=f"is owned by uid {owner}, not by the daemon's user"):
        ensure_state_dir(state)
    assert state.stat().st_mode & 0o777 == before
