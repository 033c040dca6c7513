"""``tuf-repo`` against a daemon with a policy file: TUF signing only, expiry limits.

The release client may create, read and sign (never sign-raw), and the daemon caps
expiries per role. The whole workflow must still pass ngclient; an expiry beyond the cap
is refused by the daemon and nothing gets published.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_client_repo import Served, fetch, make_files, published, run

from harness import Daemon, running_daemon

POLICY = """
[[rules]]
principals = ["release"]
operations = ["create", "read", "sign"]
keys = { roles = ["*"] }

[tuf]
max_expiry_days = { root = 365, targets = 90, snapshot = 7, timestamp = 1 }
"""


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("signerd-policy")
    with running_daemon(root, clients=["admin", "release"], policy=POLICY) as daemon:
        cfg = daemon.client_config("release")
        path = root / "client.toml"
        path.write_text(
            f'address = "{cfg.address}"\nca = "{cfg.ca}"\ncert = "{cfg.cert}"\nkey = "{cfg.key}"\n'
        )
        old = os.environ.get("SIGNER_CLIENT_CONFIG")
        os.environ["SIGNER_CLIENT_CONFIG"] = str(path)
        try:
            yield daemon
        finally:
            if old is None:
                os.environ.pop("SIGNER_CLIENT_CONFIG", None)
            else:
                os.environ["SIGNER_CLIENT_CONFIG"] = old


def test_workflow_under_policy(
    strict: Daemon, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    assert run("init", "--create-keys", repo=repo) == 0
    assert run("delegate", "bins", "--hash-bins", "16", "--create-key", repo=repo) == 0
    files = make_files(tmp_path / "in", 40)
    assert run("targets", "add", str(tmp_path / "in"), repo=repo) == 0
    assert run("publish", repo=repo) == 0
    served = Served(repo)
    try:
        check_workflow(repo, tmp_path, served, files, capsys)
    finally:
        served.close()


def check_workflow(
    repo: Path, tmp_path: Path, served: Served, files: dict[str, bytes], capsys: Any
) -> None:
    assert fetch(served, repo, tmp_path, "file13.txt") == files["file13.txt"]

    old = published(repo, "root").signed.roles["root"].keyids[0]
    assert run("rotate", "root", "--create-key", "--remove-key", old, repo=repo) == 0
    assert run("publish", repo=repo) == 0
    assert run("bump", "bins", repo=repo) == 0
    assert run("publish", repo=repo) == 0
    assert run("refresh", "--force", repo=repo) == 0
    assert fetch(served, repo, tmp_path, "sub/file20.txt") == files["sub/file20.txt"]
    capsys.readouterr()

    # a timestamp valid for 3 days is beyond the daemon's cap: refused, nothing published
    config = repo / "tuf-repo.json"
    config.write_text(
        config.read_text().replace(
            '"expiry_seconds": {}', '"expiry_seconds": {"timestamp": 259200}'
        )
    )
    before = published(repo, "timestamp").signed.version
    assert run("refresh", "--force", repo=repo) == 1
    err = capsys.readouterr().err
    assert "timestamp" in err and "at most 1 days ahead" in err
    assert published(repo, "timestamp").signed.version == before
