"""signer_client.trust.registry against a real docker-registry, images pushed by skopeo.

Reference parsing follows docker's grammar; resolving a tag must give exactly the digest
and size of the manifest bytes the harness built and pushed (the ground truth a DCT
signature records), through token auth, Basic auth and TLS, and every failure must be
the documented one-line error.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from registry_harness import PushedImage, Registry, push_image, running_registry

from signer_client.trust.registry import (
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    Manifest,
    ManifestNotFoundError,
    Reference,
    ReferenceError,
    RegistryAuthError,
    RegistryClient,
    RegistryError,
    RegistryUnavailableError,
    parse_reference,
)

DIGEST = "sha256:" + "ab" * 32

# --------------------------------------------------------------------------- parsing
GOOD = [
    ("app:1.0", Reference("docker.io", "library/app", "1.0")),
    ("team/app:latest", Reference("docker.io", "team/app", "latest")),
    ("docker.io/app:1", Reference("docker.io", "library/app", "1")),
    ("index.docker.io/team/app:1", Reference("docker.io", "team/app", "1")),
    ("127.0.0.1:5000/app:1.0", Reference("127.0.0.1:5000", "app", "1.0")),
    ("127.0.0.1:5000/team/app:1.0", Reference("127.0.0.1:5000", "team/app", "1.0")),
    ("localhost/app:v1", Reference("localhost", "app", "v1")),
    ("localhost:5000/a/b/c:V1_x.y-z", Reference("localhost:5000", "a/b/c", "V1_x.y-z")),
    ("registry.example.com/my-app__x.y:_1", Reference("registry.example.com", "my-app__x.y", "_1")),
    ("Example.COM/app:1", Reference("Example.COM", "app", "1")),
    ("[::1]:5000/app:1", Reference("[::1]:5000", "app", "1")),
    ("quay.io/a---b/c:" + "t" * 128, Reference("quay.io", "a---b/c", "t" * 128)),
]

BAD = [
    ("", "empty"),
    ("app", "a tag is required"),
    ("127.0.0.1:5000/app", "a tag is required"),
    ("app:", "invalid tag"),
    ("app:-1", "invalid tag"),
    ("app:.1", "invalid tag"),
    ("app:" + "t" * 129, "invalid tag"),
    ("app:1.0@" + DIGEST, "digest references are not accepted"),
    ("app@" + DIGEST, "digest references are not accepted"),
    ("App:1.0", "must be lowercase"),
    ("127.0.0.1:5000/Team/app:1", "must be lowercase"),
    ("team//app:1", "invalid repository name"),
    ("team/app/:1", "invalid repository name"),
    ("-app:1", "invalid repository name"),
    ("app-:1", "invalid repository name"),
    ("a..b:1", "invalid repository name"),
    ("my app:1", "whitespace"),
    ("-host.com/app:1", "invalid registry host"),
    ("host.com:port/app:1", "invalid registry host"),
    ("ab" * 32 + ":1", "hexadecimal"),
    ("example.com/" + "a" * 250 + ":1", "longer than 255"),
]


@pytest.mark.parametrize(("text", "expected"), GOOD, ids=[t for t, _ in GOOD])
def test_parse_reference_accepts_docker_names(text: str, expected: Reference) -> None:
    assert parse_reference(text) == expected


@pytest.mark.parametrize(("text", "why"), BAD, ids=[t[:40] or "empty" for t, _ in BAD])
def test_parse_reference_refuses_bad_names(text: str, why: str) -> None:
    with pytest.raises(ReferenceError, match=why) as caught:
        parse_reference(text)
    message = str(caught.value)
    assert "\n" not in message
    assert repr(text) in message  # names the reference
    assert isinstance(caught.value, RegistryError)


def test_reference_gun_and_text() -> None:
    ref = parse_reference("127.0.0.1:5000/team/app:1.0")
    assert ref.gun == "127.0.0.1:5000/team/app"
    assert str(ref) == "127.0.0.1:5000/team/app:1.0"
    assert parse_reference("app:1").gun == "docker.io/library/app"


def test_parse_reference_without_required_tag() -> None:
    assert parse_reference("team/app", require_tag=False) == Reference("docker.io", "team/app", "")
    pinned = parse_reference(f"127.0.0.1:5000/app@{DIGEST}", require_tag=False)
    assert (pinned.tag, pinned.digest) == ("", DIGEST)
    assert str(pinned) == f"127.0.0.1:5000/app@{DIGEST}"
    with pytest.raises(ReferenceError, match="invalid digest"):
        parse_reference("app@sha256:xyz", require_tag=False)


# --------------------------------------------------------------------------- registries
@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with running_registry(tmp_path_factory.mktemp("plain")) as registry:
        yield registry


@pytest.fixture(scope="module")
def token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with running_registry(tmp_path_factory.mktemp("token"), auth="token") as registry:
        yield registry


@pytest.fixture(scope="module")
def tls_basic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with running_registry(tmp_path_factory.mktemp("tls"), tls=True, auth="basic") as registry:
        yield registry


def client_for(registry: Registry, **overrides: object) -> RegistryClient:
    options: dict[str, object] = {
        "scheme": registry.scheme,
        "ca_file": registry.ca_file,
        "username": registry.username,
        "password": registry.password,
        "timeout": 5.0,
    }
    options.update(overrides)
    return RegistryClient(**options)  # type: ignore[arg-type]


def truth(image: PushedImage) -> Manifest:
    return Manifest(image.digest, image.size, image.media_type)


@pytest.mark.parametrize(
    ("kind", "media_type"),
    [("oci", OCI_MANIFEST), ("docker", DOCKER_MANIFEST), ("index", OCI_INDEX)],
)
def test_resolve_matches_pushed_manifest(plain: Registry, kind: str, media_type: str) -> None:
    image = push_image(plain, f"team/{kind}", "1.0", docker=kind == "docker", index=kind == "index")
    assert image.media_type == media_type
    client = client_for(plain)
    ref = parse_reference(image.reference)
    assert client.resolve(ref) == truth(image)
    manifest, body = client.fetch_manifest(ref)  # the GET path: digest computed from bytes
    assert manifest == truth(image)
    assert body == image.manifest


def test_resolve_follows_a_retagged_image(plain: Registry) -> None:
    first = push_image(plain, "team/moving", "stable", content="one")
    second = push_image(plain, "team/moving", "stable", content="two")
    assert first.digest != second.digest
    assert client_for(plain).resolve(parse_reference(second.reference)) == truth(second)


def test_resolve_by_pinned_digest(plain: Registry) -> None:
    image = push_image(plain, "team/pinned", "1.0")
    ref = parse_reference(f"{plain.host}/team/pinned@{image.digest}", require_tag=False)
    assert client_for(plain).resolve(ref) == truth(image)


def test_missing_tag_and_repository(plain: Registry) -> None:
    push_image(plain, "team/app", "1.0")
    client = client_for(plain)
    with pytest.raises(ManifestNotFoundError) as caught:
        client.resolve(parse_reference(f"{plain.host}/team/app:nope"))
    assert str(caught.value).startswith(f"no manifest for tag nope in {plain.host}/team/app")
    with pytest.raises(ManifestNotFoundError, match=r"no manifest for tag 1\.0 in"):
        client.resolve(parse_reference(f"{plain.host}/team/never:1.0"))
    with pytest.raises(ManifestNotFoundError):
        client.fetch_manifest(parse_reference(f"{plain.host}/team/app:nope"))


def test_corrupt_registry_storage_is_unavailable(tmp_path: Path) -> None:
    with running_registry(tmp_path) as registry:
        image = push_image(registry, "team/app", "1.0")
        link = next((tmp_path / "storage").rglob("_manifests/tags/1.0/current/link"))
        link.write_text("not a digest")  # the registry now answers 500
        with pytest.raises(RegistryUnavailableError, match=r"HTTP 500") as caught:
            client_for(registry).resolve(parse_reference(image.reference))
        assert "\n" not in str(caught.value)


# --------------------------------------------------------------------------- token auth
def test_token_auth_with_right_credentials(token: Registry) -> None:
    image = push_image(token, "team/app", "1.0")
    assert token.token_server is not None
    client = client_for(token)
    ref = parse_reference(image.reference)
    before = token.token_server.requests
    assert client.resolve(ref) == truth(image)
    assert client.fetch_manifest(ref)[1] == image.manifest
    assert token.token_server.requests == before + 1  # the token was fetched once, reused


@pytest.mark.parametrize(
    ("username", "password", "why"),
    [("alice", "wrong", "refused the credentials"), (None, None, "needs credentials")],
)
def test_token_auth_refused(
    token: Registry, username: str | None, password: str | None, why: str
) -> None:
    image = push_image(token, "team/secret", "1.0")
    client = client_for(token, username=username, password=password)
    with pytest.raises(RegistryAuthError, match=why) as caught:
        client.resolve(parse_reference(image.reference))
    assert "\n" not in str(caught.value)
    assert f"{token.host}/team/secret" in str(caught.value)


def test_token_server_answering_access_token_only(tmp_path: Path) -> None:
    with running_registry(tmp_path, auth="token", token_field="access_token") as registry:
        image = push_image(registry, "team/app", "2.0", index=True)
        assert client_for(registry).resolve(parse_reference(image.reference)) == truth(image)


# --------------------------------------------------------------------------- TLS + basic
def test_tls_with_ca_file_and_basic_auth(tls_basic: Registry) -> None:
    image = push_image(tls_basic, "team/app", "1.0", docker=True)
    assert tls_basic.ca_file is not None
    assert client_for(tls_basic).resolve(parse_reference(image.reference)) == truth(image)


def test_tls_without_the_ca_is_refused(tls_basic: Registry) -> None:
    ref = parse_reference(f"{tls_basic.host}/team/app:1.0")
    with pytest.raises(RegistryError, match=r"TLS verification of .* failed") as caught:
        client_for(tls_basic, ca_file=None).resolve(ref)
    assert not isinstance(caught.value, RegistryUnavailableError)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("username", "password"), [("alice", "wrong"), (None, None)], ids=["wrong", "none"]
)
def test_basic_auth_refused(
    tls_basic: Registry, username: str | None, password: str | None
) -> None:
    push_image(tls_basic, "team/basic", "1.0")
    client = client_for(tls_basic, username=username, password=password)
    with pytest.raises(RegistryAuthError, match=f"{tls_basic.host}/team/basic"):
        client.resolve(parse_reference(f"{tls_basic.host}/team/basic:1.0"))


# --------------------------------------------------------------------------- unavailable
def test_registry_down_is_unavailable(tmp_path: Path) -> None:
    with running_registry(tmp_path) as registry:
        image = push_image(registry, "team/app", "1.0")
        client = client_for(registry)
        assert client.resolve(parse_reference(image.reference)) == truth(image)
    with pytest.raises(RegistryUnavailableError, match="refused the connection") as caught:
        client.resolve(parse_reference(image.reference))
    assert str(caught.value) == f"{registry.host} refused the connection for {image.reference}"


def test_registry_that_never_answers_times_out() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        host = f"127.0.0.1:{listener.getsockname()[1]}"
        accepted: list[socket.socket] = []
        thread = threading.Thread(target=lambda: accepted.append(listener.accept()[0]))
        thread.start()
        try:
            client = RegistryClient(scheme="http", timeout=0.3)
            with pytest.raises(RegistryUnavailableError, match=r"did not answer within 0.3s"):
                client.resolve(parse_reference(f"{host}/app:1"))
        finally:
            thread.join(timeout=5)
            for conn in accepted:
                conn.close()


def test_plain_http_to_a_tls_registry_is_an_error(tls_basic: Registry) -> None:
    client = client_for(tls_basic, scheme="http")
    with pytest.raises(RegistryError) as caught:
        client.resolve(parse_reference(f"{tls_basic.host}/team/app:1.0"))
    assert "\n" not in str(caught.value)
