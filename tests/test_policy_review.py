"""`signerd policy check|explain`: a policy change is reviewed before SIGHUP."""

from __future__ import annotations

from pathlib import Path

from harness import running_daemon, signerd

ROOT = Path(__file__).resolve().parent.parent

GOOD = """
[groups]
release = ["alice", "dns:bob.example.org"]

[[rules]]
principals = ["group:release"]
operations = ["sign", "read"]
keys = { roles = ["targets", "targets/*"], repositories = ["example.com/*"] }

[[rules]]
principals = ["ci"]
operations = ["sign"]
keys = { roles = ["targets/releases"] }
"""

BAD = """
[groups]
nobody = []

[[rules]]
principals = ["group:nobody"]
operations = ["sign"]
keys = { roles = ["targets"] }

[[rules]]
principals = ["alice"]
operations = ["sign"]
keys = { roles = ["Root", "tagrets"] }

[[rules]]
principals = ["*"]
operations = ["sign-raw", "destroy"]
"""


def test_check_a_clean_policy(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(GOOD)
    done = signerd("policy", "check", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 rules, 0 errors, 0 warnings" in done.stdout


def test_check_finds_rules_that_never_match_and_grants_too_wide(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(BAD)
    done = signerd("policy", "check", str(path))
    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout
    assert "error: policy" not in out
    assert "warning: policy: group 'nobody' has no members" in out
    assert "error: rule #1: names only empty group(s) ['nobody']: matches nobody" in out
    assert "error: rule #2: role 'Root': roles are lower case" in out
    assert "warning: rule #2: role 'tagrets' looks like a misspelt top-level role" in out
    assert (
        "warning: rule #3: grants sign-raw on ['root', 'snapshot', 'targets', 'timestamp']" in out
    )
    assert "warning: rule #3: every authenticated client may ['destroy', 'sign-raw']" in out
    assert "warning: rule #3: destroy on every key of every repository" in out


def test_check_refuses_a_policy_that_does_not_parse(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text('[[rules]]\nprincipals = ["group:ghosts"]\noperations = ["sign"]\n')
    done = signerd("policy", "check", str(path))
    assert done.returncode == 2
    assert "'group:ghosts' names a group not defined in [groups]" in done.stderr
    assert "Traceback" not in done.stderr


def test_explain_allowed_and_denied(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(GOOD)
    allowed = signerd(
        "policy", "explain", str(path), "--principal", "dns:bob.example.org",
        "--operation", "sign", "--role", "targets/ci", "--repository", "example.com/app",
    )  # fmt: skip
    assert allowed.returncode == 0, allowed.stderr
    assert "allowed by rule #1" in allowed.stdout

    denied = signerd(
        "policy", "explain", str(path), "--principal", "bob.example.org",
        "--operation", "sign", "--role", "targets/ci", "--repository", "example.com/app",
    )  # fmt: skip
    assert denied.returncode == 1
    lines = denied.stdout.splitlines()
    assert "denied: no rule allows it" in lines
    assert any("rule #1: does not name cn:bob.example.org" in line for line in lines)
    assert any("rule #2: does not name cn:bob.example.org" in line for line in lines)

    wrong_role = signerd(
        "policy", "explain", str(path), "--principal", "ci", "--operation", "sign",
        "--role", "targets/other",
    )  # fmt: skip
    assert "rule #2: roles ['targets/releases'] do not match 'targets/other'" in wrong_role.stdout

    unknown = signerd(
        "policy", "explain", str(path), "--principal", "ci", "--operation", "sing",
        "--role", "targets",
    )  # fmt: skip
    assert unknown.returncode == 2 and "--operation 'sing'" in unknown.stderr


def test_explain_a_key_by_id_asks_the_daemon(tmp_path: Path) -> None:
    with running_daemon(tmp_path / "d", clients=["admin"]) as daemon:
        key = daemon.client().create_key(
            "release", role="targets/releases", repository="example.com/app"
        )
        config = daemon.client_config("admin")
        client_toml = tmp_path / "client.toml"
        client_toml.write_text(
            f'address = "{config.address}"\nca = "{config.ca}"\n'
            f'cert = "{config.cert}"\nkey = "{config.key}"\n'
        )
        path = tmp_path / "policy.toml"
        path.write_text(GOOD)
        done = signerd(
            "policy", "explain", str(path), "--principal", "ci", "--operation", "sign",
            "--key", key.key_id, "--client-config", str(client_toml),
        )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "role targets/releases, repository example.com/app" in done.stdout
    assert "allowed by rule #2" in done.stdout
