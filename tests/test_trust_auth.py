"""``signer-trust`` against a notary-server and a registry that both require token auth.

Real processes only: signerd (SoftHSM token, mTLS), Debian's notary-server configured with
``"auth": {"type": "token", ...}`` (docker/distribution's token access controller), Debian's
docker-registry with token auth, each backed by its own ``registry_harness.TokenServer``
(ES256 JWTs with an x5c chain to the server's ``rootcertbundle``), and the real notary CLI
reading what was published with ``NOTARY_AUTH``. Two token servers with different accounts
prove that notary credentials go to notary-server and registry credentials to the registry.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from notary_harness import (
    CLI_TIMEOUT,
    NOTARY_SERVER_PRINCIPAL,
    PASSPHRASES,
    NotaryServer,
    require,
    start_notary_server,
    stop_notary_server,
)
from registry_harness import (
    PushedImage,
    Registry,
    TokenServer,
    push_image,
    start_registry,
)

from harness import Daemon, running_daemon

NOTARY_USER = "build-bot"
NOTARY_PASSWORD = "notary s3cret"
NOTARY_SERVICE = "signer-test-notary"
NOTARY_ISSUER = "signer-test-notary-issuer"

POLICY = f"""
[[rules]]
principals = ["{NOTARY_SERVER_PRINCIPAL}"]
operations = ["create", "sign", "read"]
keys = {{ roles = ["timestamp", "snapshot"], repositories = ["*"] }}

[[rules]]
principals = ["admin"]
operations = ["create", "read", "sign", "certify", "retire", "audit"]
keys = {{ roles = ["*"], repositories = ["*"] }}
"""


class AnonymousTokenServer(TokenServer):
    """A TokenServer that, like Docker Hub's and Harbor's token services, answers a request
    without credentials with a token granting nothing (wrong credentials still get 401).

    The notary CLI needs this for reads: ``notary list`` first asks for an anonymous token
    and only after notary-server refuses that token (401) retries with ``NOTARY_AUTH``; a
    401 from the token server itself ends the command (cmd/notary/tuf.go, authRoundTripper).
    """

    anonymous = 0

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        url = urllib.parse.urlsplit(request.path)
        if url.path == "/token" and request.headers.get("Authorization") is None:
            self.requests += 1
            self.anonymous += 1
            service = urllib.parse.parse_qs(url.query).get("service", [self.service])[0]
            token = self.issue("", service, [])
            self._reply(request, 200, {"token": token, "access_token": token, "expires_in": 300})
            return
        super()._handle(request)


def notary_auth(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


@dataclass
class Stack:
    root: Path
    daemon: Daemon
    server: NotaryServer
    tokens: TokenServer  # notary-server's token server
    registry: Registry  # token auth, its own token server and account

    def logs(self) -> str:
        return (
            f"--- signerd log (tail)\n{self.daemon.log()[-3000:]}\n"
            f"--- notary-server log (tail)\n{self.server.log()[-3000:]}\n"
            f"--- registry log (tail)\n{self.registry.log()[-2000:]}"
        )

    def gun(self, repository: str) -> str:
        return f"{self.registry.host}/{repository}"

    def push(self, repository: str, tag: str) -> PushedImage:
        return push_image(self.registry, repository, tag)

    def trust(
        self, *args: str, env: dict[str, str] | None = None, ok: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``signer-trust`` with only the credentials in ``env`` (none inherited)."""
        config = self.daemon.client_config("admin")
        signer_config = self.root / "signer-client-admin.toml"
        signer_config.write_text(
            f'address = "{config.address}"\nca = "{config.ca}"\n'
            f'cert = "{config.cert}"\nkey = "{config.key}"\n'
        )
        cmd = [
            sys.executable,
            "-m",
            "signer_client.trust.cli",
            "-s",
            self.server.url,
            "--tlscacert",
            str(self.daemon.pki / "ca.pem"),
            "-d",
            str(self.root / "trust-admin"),
            "--signer-config",
            str(signer_config),
            "--registry-plain-http",
            *args,
        ]
        base = {
            k: v
            for k, v in os.environ.items()
            if k not in ("NOTARY_AUTH", "SIGNER_TRUST_PASSWORD", "REGISTRY_PASSWORD")
        }
        done = subprocess.run(
            cmd,
            env={**base, **(env or {})},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if ok and done.returncode != 0:
            pytest.fail(
                f"`signer-trust {' '.join(args)}` failed ({done.returncode}):\n"
                f"--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}\n{self.logs()}",
                pytrace=False,
            )
        return done

    def notary_cli(
        self, trust_dir: str, *args: str, auth: str | None
    ) -> subprocess.CompletedProcess[str]:
        """The real notary CLI, reading with ``NOTARY_AUTH`` (or with none)."""
        env = {k: v for k, v in os.environ.items() if k != "NOTARY_AUTH"}
        env.update(PASSPHRASES)
        if auth is not None:
            env["NOTARY_AUTH"] = auth
        cmd = [
            require("notary"),
            "-s",
            self.server.url,
            "-d",
            str(self.root / trust_dir),
            "--tlscacert",
            str(self.daemon.pki / "ca.pem"),
            *args,
        ]
        return subprocess.run(
            cmd,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
            check=False,
        )

    def served(self, gun: str, role: str) -> dict[str, Any]:
        """A role file as notary-server serves it, fetched with a pull token."""
        token = self.tokens.issue(
            NOTARY_USER, NOTARY_SERVICE, [{"type": "repository", "name": gun, "actions": ["pull"]}]
        )
        request = urllib.request.Request(
            f"{self.server.url}/v2/{gun}/_trust/tuf/{role}.json",
            headers={"Authorization": f"Bearer {token}"},
        )
        ctx = ssl.create_default_context(cafile=str(self.daemon.pki / "ca.pem"))
        with urllib.request.urlopen(request, context=ctx, timeout=10) as resp:
            return dict(json.loads(resp.read()))

    def versions(self, gun: str) -> dict[str, int]:
        return {
            role: int(self.served(gun, role)["signed"]["version"])
            for role in ("root", "targets", "targets/releases", "snapshot", "timestamp")
        }


def start_auth_notary_server(root: Path, daemon: Daemon, tokens: TokenServer) -> NotaryServer:
    """notary-server with token auth (its health endpoint is not behind auth)."""
    auth = {
        "type": "token",
        "options": {
            "realm": tokens.realm,
            "service": tokens.service,
            "issuer": tokens.issuer,
            "rootcertbundle": str(tokens.bundle),
        },
    }
    return start_notary_server(root, daemon, "ecdsa", extra={"auth": auth})


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require("notary-server")
    require("notary")
    root = tmp_path_factory.mktemp("trust-auth")
    with running_daemon(
        root / "signerd", clients=["admin", NOTARY_SERVER_PRINCIPAL], policy=POLICY
    ) as daemon:
        tokens = AnonymousTokenServer(
            root / "notary-token",
            {NOTARY_USER: NOTARY_PASSWORD},
            service=NOTARY_SERVICE,
            issuer=NOTARY_ISSUER,
        )
        try:
            server = start_auth_notary_server(root, daemon, tokens)
            try:
                registry = start_registry(root / "registry", auth="token")
                try:
                    yield Stack(root, daemon, server, tokens, registry)
                finally:
                    registry.stop()
            finally:
                stop_notary_server(server)
        finally:
            tokens.stop()


def with_password(password: str = NOTARY_PASSWORD) -> dict[str, str]:
    return {"SIGNER_TRUST_PASSWORD": password}


def registry_env(stack: Stack, password: str | None = None) -> dict[str, str]:
    return {"REGISTRY_PASSWORD": password if password is not None else str(stack.registry.password)}


def notary_list(stack: Stack, gun: str, trust_dir: str) -> dict[str, tuple[str, int, str]]:
    done = stack.notary_cli(trust_dir, "list", gun, auth=notary_auth(NOTARY_USER, NOTARY_PASSWORD))
    assert done.returncode == 0, (done.stdout, done.stderr, stack.logs())
    rows: dict[str, tuple[str, int, str]] = {}
    for line in done.stdout.splitlines():
        parts = line.split()
        if len(parts) == 4 and len(parts[1]) == 64 and parts[2].isdigit():
            rows[parts[0]] = (parts[1], int(parts[2]), parts[3])
    return rows


def fails(done: subprocess.CompletedProcess[str], *words: str) -> str:
    """A refusal: exit 1, one line on stderr naming the problem, no traceback."""
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("signer-trust: error: "), done.stderr
    assert "Traceback" not in done.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def published(stack: Stack) -> tuple[str, PushedImage]:
    """init, signer add --create-key and sign, all through both token servers."""
    gun = stack.gun("auth/app")
    image = stack.push("auth/app", "1.0")
    assert stack.registry.token_server is not None
    registry_tokens = stack.registry.token_server.requests
    user = ("--username", NOTARY_USER)
    stack.trust(*user, "init", gun, env=with_password())
    stack.trust(*user, "signer", "add", "ci", gun, "--create-key", env=with_password())
    reg = ("--registry-username", str(stack.registry.username))
    done = stack.trust(
        *user, *reg, "sign", f"{gun}:1.0", env={**with_password(), **registry_env(stack)}
    )
    assert "targets/releases" in done.stdout and "targets/ci" in done.stdout
    # both token servers were asked, each with its own account (never anonymously)
    assert stack.tokens.requests > 0 and stack.tokens.anonymous == 0
    assert stack.registry.token_server.requests > registry_tokens
    return gun, image


# -- tests -------------------------------------------------------------------------------


def test_servers_really_require_tokens(stack: Stack) -> None:
    """Without a token both servers answer 401 with a Bearer challenge at their realm."""
    assert stack.registry.token_server is not None
    ctx = ssl.create_default_context(cafile=str(stack.daemon.pki / "ca.pem"))
    for url, context, realm in (
        (f"{stack.server.url}/v2/", ctx, stack.tokens.realm),
        (f"{stack.registry.url}/v2/", None, stack.registry.token_server.realm),
    ):
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(url, context=context, timeout=10)
        assert caught.value.code == 401
        challenge = caught.value.headers["WWW-Authenticate"]
        assert challenge.startswith("Bearer ") and realm in challenge, challenge


def test_username_and_password_init_sign_inspect(
    stack: Stack, published: tuple[str, PushedImage]
) -> None:
    gun, image = published
    digest = image.digest.removeprefix("sha256:")
    inspect = json.loads(
        stack.trust("--username", NOTARY_USER, "inspect", gun, env=with_password()).stdout
    )
    assert inspect[0]["SignedTags"] == [{"SignedTag": "1.0", "Digest": digest, "Signers": ["ci"]}]
    # the real notary CLI, with NOTARY_AUTH, reads the tag with the registry's digest
    rows = notary_list(stack, gun, "notary-fresh")
    assert rows["1.0"][:2] == (digest, image.size)
    assert rows["1.0"][2] in ("targets/releases", "targets/ci")
    # ... and without credentials it is refused
    anonymous = stack.notary_cli("notary-anon", "list", gun, auth=None)
    assert anonymous.returncode != 0, anonymous.stdout
    assert "1.0" not in anonymous.stdout


def test_notary_auth_env_for_signer_trust(stack: Stack, published: tuple[str, PushedImage]) -> None:
    gun, image = published
    env = {"NOTARY_AUTH": notary_auth(NOTARY_USER, NOTARY_PASSWORD)}
    before = stack.versions(gun)
    done = stack.trust(
        "sign", f"{gun}:2.0", "--digest", image.digest, "--size", str(image.size), env=env
    )
    assert "targets/releases" in done.stdout
    after = stack.versions(gun)
    assert after["targets/releases"] == before["targets/releases"] + 1
    inspect = json.loads(stack.trust("inspect", gun, env=env).stdout)
    tags = {t["SignedTag"]: t for t in inspect[0]["SignedTags"]}
    assert set(tags) == {"1.0", "2.0"}
    assert tags["2.0"]["Digest"] == image.digest.removeprefix("sha256:")
    # the registry side with NOTARY_AUTH for notary and its own account for the registry
    reg = ("--registry-username", str(stack.registry.username))
    stack.push("auth/app", "3.0")
    stack.trust(*reg, "sign", f"{gun}:3.0", env={**env, **registry_env(stack)})
    assert "3.0" in notary_list(stack, gun, "notary-fresh")


@pytest.mark.parametrize(
    ("case", "options", "env"),
    [
        ("wrong password", ("--username", NOTARY_USER), with_password("wrong")),
        ("wrong NOTARY_AUTH", (), {"NOTARY_AUTH": notary_auth(NOTARY_USER, "wrong")}),
        ("unknown user", ("--username", "mallory"), with_password()),
        ("registry's account", (), {"NOTARY_AUTH": notary_auth("alice", "correct horse")}),
        ("no credentials", (), {}),
    ],
)
def test_notary_credentials_refused(
    stack: Stack,
    published: tuple[str, PushedImage],
    case: str,
    options: tuple[str, ...],
    env: dict[str, str],
) -> None:
    gun, image = published
    before = stack.versions(gun)
    host = stack.server.url.removeprefix("https://")
    pin = ("--digest", image.digest, "--size", str(image.size))
    attempts = [
        ("sign", f"{gun}:bad", *pin),
        ("revoke", f"{gun}:1.0"),
        ("signer", "add", "other", gun, "--create-key"),
        ("inspect", gun),
        ("init", stack.gun("auth/never")),
    ]
    for args in attempts:
        line = fails(stack.trust(*options, *args, env=env, ok=False))
        # names notary-server (whose credentials failed) and the repository
        assert host in line and f"{stack.registry.host}/auth/" in line, (case, args, line)
        assert ("credentials refused" if env else "authentication required") in line, line
        assert NOTARY_PASSWORD not in line and "correct horse" not in line, line
    # with registry resolution too (correct registry credentials): still nothing published
    reg = ("--registry-username", str(stack.registry.username))
    fails(
        stack.trust(
            *options, *reg, "sign", f"{gun}:1.0", env={**env, **registry_env(stack)}, ok=False
        )
    )
    assert stack.versions(gun) == before
    assert stack.daemon.health() == 1  # SERVING
    # the right credentials still work afterwards
    tags = json.loads(
        stack.trust("--username", NOTARY_USER, "inspect", gun, env=with_password()).stdout
    )
    assert "1.0" in {t["SignedTag"] for t in tags[0]["SignedTags"]}


def test_username_without_password(stack: Stack, published: tuple[str, PushedImage]) -> None:
    gun, _ = published
    fails(
        stack.trust("--username", NOTARY_USER, "inspect", gun, env={}, ok=False),
        "SIGNER_TRUST_PASSWORD",
    )


@pytest.mark.parametrize(
    ("user", "password", "why"),
    [
        ("alice", "wrong", "refused the credentials"),
        (NOTARY_USER, NOTARY_PASSWORD, "refused the credentials"),  # notary's account only
        (None, None, "needs credentials"),
    ],
)
def test_registry_credentials_refused(
    stack: Stack,
    published: tuple[str, PushedImage],
    user: str | None,
    password: str | None,
    why: str,
) -> None:
    gun, _ = published
    stack.push("auth/app", "4.0")
    before = stack.versions(gun)
    reg = ("--registry-username", user) if user else ()
    env = {"REGISTRY_PASSWORD": password} if password else {}
    done = stack.trust(
        "--username",
        NOTARY_USER,
        *reg,
        "sign",
        f"{gun}:4.0",
        env={**env, **with_password()},
        ok=False,
    )
    line = fails(done, stack.registry.host, "auth/app", why)
    assert "correct horse" not in line and NOTARY_PASSWORD not in line, line
    assert stack.versions(gun) == before
    assert "4.0" not in notary_list(stack, gun, "notary-fresh")
    assert stack.daemon.health() == 1
