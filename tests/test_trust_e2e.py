"""End to end: ``signer-trust`` runs Docker Content Trust with every key in signerd's token.

Real parts only: signerd (SoftHSM token, mTLS), Debian's notary-server (memory storage)
using signerd as its signer, Debian's docker-registry with images pushed by skopeo, and
the real notary CLI (and docker CLI, where installed) reading what we publish.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from notary_harness import (
    NOTARY_SERVER_PRINCIPAL,
    NotaryCLI,
    NotaryServer,
    require,
    start_notary_server,
    stop_notary_server,
)
from registry_harness import PushedImage, Registry, push_image, start_registry

from harness import Daemon, running_daemon

BUILD_FARM = "ci"  # a build farm's principal: signs releases and targets/ci only

POLICY = f"""
[[rules]]
principals = ["{NOTARY_SERVER_PRINCIPAL}"]
operations = ["create", "sign", "read"]
keys = {{ roles = ["timestamp", "snapshot"], repositories = ["*"] }}

[[rules]]
principals = ["admin"]
operations = ["create", "read", "sign", "certify", "retire", "audit"]
keys = {{ roles = ["root", "targets", "snapshot", "targets/*"], repositories = ["*"] }}

[[rules]]
principals = ["admin"]
operations = ["read", "audit"]
keys = {{ roles = ["*"], repositories = ["*"] }}

[[rules]]
principals = ["{BUILD_FARM}"]
operations = ["read", "sign"]
keys = {{ roles = ["targets/releases", "targets/ci"], repositories = ["*"] }}
"""


@dataclass
class Stack:
    root: Path
    daemon: Daemon
    server: NotaryServer
    registry: Registry

    def logs(self) -> str:
        return (
            f"--- signerd log (tail)\n{self.daemon.log()[-4000:]}\n"
            f"--- notary-server log (tail)\n{self.server.log()[-4000:]}"
        )

    def client_config(self, principal: str) -> Path:
        config = self.daemon.client_config(principal)
        path = self.root / f"signer-client-{principal}.toml"
        path.write_text(
            f'address = "{config.address}"\nca = "{config.ca}"\n'
            f'cert = "{config.cert}"\nkey = "{config.key}"\n'
        )
        return path

    def trust(
        self, *args: str, principal: str = "admin", trust_dir: str = "trust-admin", ok: bool = True
    ) -> subprocess.CompletedProcess[str]:
        cmd = [
            sys.executable,
            "-m",
            "signer_client.trust.cli",
            "-s",
            self.server.url,
            "--tlscacert",
            str(self.daemon.pki / "ca.pem"),
            "-d",
            str(self.root / trust_dir),
            "--signer-config",
            str(self.client_config(principal)),
            "--registry-plain-http",
            *args,
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if ok and done.returncode != 0:
            pytest.fail(
                f"`signer-trust {' '.join(args)}` failed ({done.returncode}):\n"
                f"--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}\n{self.logs()}",
                pytrace=False,
            )
        return done

    def notary(self, trust_dir: str) -> NotaryCLI:
        return NotaryCLI(self.server, self.root / trust_dir, self.daemon.pki / "ca.pem", self.logs)

    def gun(self, repository: str) -> str:
        return f"{self.registry.host}/{repository}"

    def push(self, repository: str, tag: str, **kwargs: Any) -> PushedImage:
        return push_image(self.registry, repository, tag, **kwargs)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require("notary-server")
    require("notary")
    root = tmp_path_factory.mktemp("trust")
    with running_daemon(
        root / "signerd",
        clients=["admin", NOTARY_SERVER_PRINCIPAL, BUILD_FARM],
        policy=POLICY,
    ) as daemon:
        server = start_notary_server(root, daemon, "ecdsa")
        registry = start_registry(root / "registry")
        try:
            yield Stack(root, daemon, server, registry)
        finally:
            registry.stop()
            stop_notary_server(server)


def notary_targets(cli: NotaryCLI, gun: str, *extra: str) -> dict[str, tuple[str, int, str]]:
    """``notary list``: {tag: (hex digest, size, role)}."""
    rows: dict[str, tuple[str, int, str]] = {}
    for line in cli("list", gun, *extra).splitlines():
        parts = line.split()
        if len(parts) == 4 and len(parts[1]) == 64 and parts[2].isdigit():
            rows[parts[0]] = (parts[1], int(parts[2]), parts[3])
    return rows


def test_build_farm_flow_read_by_notary_cli(stack: Stack) -> None:
    gun = stack.gun("team/app")
    image = stack.push("team/app", "1.0")
    stack.trust("init", gun)
    stack.trust("signer", "add", BUILD_FARM, gun, "--create-key")
    done = stack.trust("sign", f"{gun}:1.0", principal=BUILD_FARM, trust_dir="trust-ci")
    assert "targets/releases" in done.stdout and "targets/ci" in done.stdout

    digest = image.digest.removeprefix("sha256:")
    rows = notary_targets(stack.notary("fresh"), gun)
    assert rows["1.0"][:2] == (digest, image.size)
    assert rows["1.0"][2] in ("targets/releases", "targets/ci")

    inspect = json.loads(stack.trust("inspect", gun).stdout)
    assert inspect[0]["SignedTags"] == [
        {"SignedTag": "1.0", "Digest": digest, "Signers": [BUILD_FARM]}
    ]
