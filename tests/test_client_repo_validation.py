"""``tuf-repo`` refuses what cannot work, before anything changes.

Every refusal here is checked the same way (``refused``): exit code 1, one line on
stderr, no traceback, every file of the repository byte for byte as before, and no new
active key in the daemon. The daemon has a policy: TUF expiry caps (so an ``init`` can
fail after its keys were made) and the right to destroy keys (so such an init can undo
them). After the refusals, a fresh ngclient trusting only 1.root.json still verifies.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_client_repo import Served, fetch, make_files, published, run
from test_client_repo import refused as refused_unchanged
from tuf.api.metadata import TargetFile

from harness import Daemon, running_daemon
from signer.devpki import issue_client, make_ca
from signer_client.repo import Repository, RepoStore

POLICY = """
[[rules]]
principals = ["admin"]
operations = ["create", "read", "sign", "retire", "destroy"]
keys = { roles = ["*"] }

[tuf]
max_expiry_days = { root = 365, targets = 90, snapshot = 7, timestamp = 1 }
"""


def write_config(path: Path, address: str, ca: Path, cert: Path, key: Path, **extra: Any) -> Path:
    lines = [f'address = "{address}"', f'ca = "{ca}"', f'cert = "{cert}"', f'key = "{key}"']
    lines += [f"{k} = {v}" for k, v in extra.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("signerd-capped")
    with running_daemon(root, clients=["admin"], policy=POLICY) as daemon:
        cfg = daemon.client_config("admin")
        path = write_config(root / "client.toml", cfg.address, cfg.ca, cfg.cert, cfg.key)
        old = os.environ.get("SIGNER_CLIENT_CONFIG")
        os.environ["SIGNER_CLIENT_CONFIG"] = str(path)
        try:
            yield daemon
        finally:
            if old is None:
                os.environ.pop("SIGNER_CLIENT_CONFIG", None)
            else:
                os.environ["SIGNER_CLIENT_CONFIG"] = old


@pytest.fixture(scope="module")
def repo(capped: Daemon, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One published repository with a path delegation, shared by the refusal tests."""
    path = tmp_path_factory.mktemp("validation") / "repo"
    assert run("init", "--create-keys", "--algorithm", "ed25519", repo=path) == 0
    assert run("delegate", "pkgs", "--paths", "pkgs/*", "--create-key", repo=path) == 0
    assert run("publish", repo=path) == 0
    return path


def active_keys(daemon: Daemon) -> set[str]:
    with daemon.client() as client:
        return {k.key_id for k in client.list_keys(state="active")}


def refused(capsys: pytest.CaptureFixture[str], daemon: Daemon, repo: Path, *argv: str) -> str:
    """A refusal (see test_client_repo.refused) that also leaves no key in the daemon."""
    keys = active_keys(daemon)
    err = refused_unchanged(capsys, repo, *argv)
    assert active_keys(daemon) == keys, "no key is left in the daemon"
    return err


def verifies(repo: Path, tmp_path: Path, target: str | None = None) -> bytes | None:
    served = Served(repo)
    try:
        return fetch(served, repo, tmp_path, target or "nothing")
    finally:
        served.close()


# -- expiry input ------------------------------------------------------------------------


def test_expiry_input_refused(
    capped: Daemon, repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    new = tmp_path / "new"
    init = ["init", "--create-keys", "--expires"]
    assert "expires before clients fetch it" in refused(capsys, capped, new, *init, "timestamp=0s")
    assert "bogus: not a top-level role" in refused(capsys, capped, new, *init, "bogus=3d")
    assert "more than 36500 days" in refused(capsys, capped, new, *init, "timestamp=99999999d")
    assert "bad duration" in refused(capsys, capped, new, *init, "timestamp=soon")
    err = refused(capsys, capped, new, "init", "--create-keys", "--threshold", "root=x")
    assert "want a whole number" in err
    assert "above 0 and at most 1" in refused(capsys, capped, repo, "refresh", "--margin", "-1")
    assert "above 0 and at most 1" in refused(capsys, capped, repo, "refresh", "--margin", "0")
    assert "expires before" in refused(capsys, capped, repo, "expiry", "set", "timestamp", "5s")
    assert "no role delegates to 'nope'" in refused(
        capsys, capped, repo, "expiry", "set", "nope", "3d"
    )
    assert verifies(repo, tmp_path) is None


# -- target paths ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a#b.txt", "a?b.txt", "a%41.txt", "a b.txt", "a\tb.txt"])
def test_target_paths_clients_cannot_fetch_refused(
    capped: Daemon, repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "fine.txt").write_text("fine")
    (tmp_path / "in" / name).write_text("x")
    err = refused(capsys, capped, repo, "targets", "add", str(tmp_path / "in"))
    assert "cannot be fetched over HTTP" in err and repr(name) in err


def test_verify_uses_http_paths_and_names_the_target(
    capped: Daemon, repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A target listed under a name no URL can carry: verify fails for it, locally as
    over HTTP, naming it; a tampered target served over HTTP is named too."""
    copy = tmp_path / "copy"  # its own keys: a copy would sign versions of the shared one
    assert run("init", "--create-keys", "--algorithm", "ed25519", repo=copy) == 0
    (tmp_path / "ok.txt").write_text("ok\n")
    (tmp_path / "odd.txt").write_text("odd\n")
    r = Repository(RepoStore(copy))
    r.add_targets([("ok.txt", tmp_path / "ok.txt")])
    with r.edit("targets") as targets:  # what an adopted repository may contain
        info = TargetFile.from_file("odd#1.txt", str(tmp_path / "odd.txt"))
        targets.targets["odd#1.txt"] = info
    r.store.put_target(tmp_path / "odd.txt", "odd#1.txt", info.hashes["sha256"])
    r.publish()
    capsys.readouterr()
    assert run("verify", "--target", "ok.txt", repo=copy) == 0
    assert run("verify", "--all-targets", repo=copy) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "target 'odd#1.txt'" in err

    served = Served(copy)
    try:
        assert run("verify", "--url", served.url, "--all-targets", repo=copy) == 1
        assert "target 'odd#1.txt'" in capsys.readouterr().err
        digest = published(copy, "targets").signed.targets["ok.txt"].hashes["sha256"]
        (copy / "targets" / f"{digest}.ok.txt").write_text("no\n")  # same length
        assert run("verify", "--url", served.url, "--target", "ok.txt", repo=copy) == 1
        err = capsys.readouterr().err
        assert "target 'ok.txt'" in err and "LengthOrHashMismatchError" in err
    finally:
        served.close()


# -- delegations -------------------------------------------------------------------------


def test_target_outside_a_delegation_refused(
    capped: Daemon, repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "x.txt").write_text("x")
    add = ["targets", "add", str(tmp_path / "x.txt")]
    err = refused(capsys, capped, repo, *add, "--role", "pkgs", "--prefix", "other/")
    assert "'other/x.txt' is outside the delegation to pkgs (paths pkgs/*)" in err
    # listed in top-level targets first: clients would never look in pkgs for it
    assert run(*add, "--prefix", "pkgs/", repo=repo) == 0
    assert run("publish", repo=repo) == 0
    err = refused(capsys, capped, repo, *add, "--role", "pkgs", "--prefix", "pkgs/")
    assert "listed in targets, which clients search before pkgs" in err
    assert verifies(repo, tmp_path, "pkgs/x.txt") == b"x"


def test_nested_delegation_must_be_reachable(
    capped: Daemon, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    assert run("init", "--create-keys", "--algorithm", "ed25519", repo=repo) == 0
    assert run("delegate", "pkgs", "--paths", "pkgs/*", "--create-key", repo=repo) == 0
    args = ["delegate", "inner", "--from", "pkgs", "--paths", "*/*", "--create-key"]
    assert run(*args, repo=repo) == 0
    assert run("publish", repo=repo) == 0
    (tmp_path / "y.txt").write_text("y")
    add = ["targets", "add", str(tmp_path / "y.txt"), "--role", "inner"]
    err = refused(capsys, capped, repo, *add, "--prefix", "docs/")  # pkgs does not cover it
    assert "outside the delegation to inner (paths */*)" in err
    assert run(*add, "--prefix", "pkgs/", repo=repo) == 0
    assert run("publish", repo=repo) == 0
    assert verifies(repo, tmp_path, "pkgs/y.txt") == b"y"


# -- nothing created before the input is valid -------------------------------------------


def test_failed_init_leaves_no_keys_and_no_files(
    capped: Daemon, repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    new = tmp_path / "new"
    # beyond the daemon's cap: known only once the keys exist; they are destroyed again
    err = refused(capsys, capped, new, "init", "--create-keys", "--expires", "timestamp=3d")
    assert "at most 1 days ahead" in err and "4 key(s) created for it were destroyed" in err
    new.mkdir()  # an existing empty directory stays, empty
    refused(capsys, capped, new, "init", "--create-keys", "--expires", "snapshot=30d")
    assert list(new.iterdir()) == []
    assert run("init", "--create-keys", repo=new) == 0  # and can be initialised afresh
    assert "already a repository" in refused(capsys, capped, repo, "init", "--create-keys")
    other = tmp_path / "other"
    (other / "metadata").mkdir(parents=True)
    (other / "metadata" / "1.root.json").write_text("{}")
    assert "is not empty" in refused(capsys, capped, other, "init", "--create-keys")


def test_rotate_and_delegate_check_before_creating_keys(
    capped: Daemon, repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rotate = ["rotate", "root", "--create-key"]
    assert "threshold 5" in refused(capsys, capped, repo, *rotate, "--threshold", "5")
    assert "not" in refused(capsys, capped, repo, *rotate, "--remove-key", "ab" * 32)
    assert "no role delegates to 'nope'" in refused(
        capsys, capped, repo, "rotate", "nope", "--create-key"
    )
    delegate = ["delegate", "more", "--paths", "more/*", "--create-key"]
    assert "already delegates" in refused(
        capsys, capped, repo, "delegate", "pkgs", "--paths", "x/*", "--create-key"
    )
    assert "no role" in refused(capsys, capped, repo, *delegate, "--from", "nope")
    assert "top-level role" in refused(
        capsys, capped, repo, "delegate", "snapshot", "--paths", "x", "--create-key"
    )


# -- TLS and config files ----------------------------------------------------------------


def test_tls_mismatches_say_what_is_wrong(
    capped: Daemon, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    cfg = capped.client_config("admin")
    rogue = tmp_path / "rogue"
    rogue.mkdir()
    issue_client(rogue, "admin", make_ca(rogue, "rogue CA"))
    cert, key = rogue / "client-admin.pem", rogue / "client-admin-key.pem"
    cases = {
        "other-ca": (cfg.address, cfg.ca, cert, key, "does not accept our client certificate"),
        "untrusted": (cfg.address, rogue / "ca.pem", cfg.cert, cfg.key, "is not trusted"),
        "mismatch": (cfg.address, cfg.ca, cfg.cert, key, "does not belong to key"),
        "missing": (cfg.address, cfg.ca, tmp_path / "nope.pem", cfg.key, "No such file"),
        "down": ("localhost:1", cfg.ca, cfg.cert, cfg.key, "nothing accepts connections"),
    }
    for name, (address, ca, c, k, text) in cases.items():
        path = write_config(tmp_path / f"{name}.toml", address, ca, c, k, retries=0)
        monkeypatch.setenv("SIGNER_CLIENT_CONFIG", str(path))
        err = refused(capsys, capped, tmp_path / name, "init", "--create-keys")
        assert text in err, (name, err)


def test_config_and_metadata_errors_name_the_file(
    capped: Daemon, repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    cfg = capped.client_config("admin")
    bad = tmp_path / "bad.toml"
    for text, want in (
        (f'address = "{cfg.address}"\nca = "{cfg.ca}"\ncert = "{cfg.cert}"\n', "key is missing"),
        ('address = "x\n', "not valid TOML"),
        (
            f'address = 7443\nca = "{cfg.ca}"\ncert = "c"\nkey = "k"\n',
            "address must be a non-empty string",
        ),
        ('address = "a:1"\nca = "c"\ncert = "c"\nkey = "k"\ncafile = "x"\n', "unknown field"),
    ):
        bad.write_text(text)
        monkeypatch.setenv("SIGNER_CLIENT_CONFIG", str(bad))
        err = refused(capsys, capped, tmp_path / "new", "init", "--create-keys")
        assert str(bad) in err and want in err, err
    monkeypatch.undo()

    copy = tmp_path / "copy"
    shutil.copytree(repo, copy)
    version = published(copy, "targets").signed.version
    target_md = copy / "metadata" / f"{version}.targets.json"
    target_md.write_text("{not json")
    err = refused(capsys, capped, copy, "status")
    assert str(target_md) in err and "not valid TUF metadata" in err
    (copy / "tuf-repo.json").write_text("[]")
    assert "tuf-repo.json: not a valid tuf-repo settings file" in refused(
        capsys, capped, copy, "status"
    )


def test_published_repository_still_verifies(repo: Path, tmp_path: Path) -> None:
    """After all the refusals above, the shared repository is intact for clients."""
    files = make_files(tmp_path / "in", 2, "pkg")
    assert run("targets", "add", str(tmp_path / "in"), "--prefix", "pkgs/", repo=repo) == 0
    assert run("publish", repo=repo) == 0
    assert verifies(repo, tmp_path, "pkgs/pkg1.txt") == files["pkg1.txt"]
    assert run("verify", "--all-targets", repo=repo) == 0
