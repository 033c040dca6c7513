"""Image references and the manifest digest behind a tag, from a Docker Registry (API v2).

Docker Content Trust signs a tag by recording, in the ``targets`` metadata of the image's
GUN, the sha256 digest and length of the manifest the tag points to. This module answers
the two questions that needs: which registry, repository and tag a reference such as
``127.0.0.1:5000/team/app:1.0`` names (docker's own reference grammar, so a name means
here what it means to ``docker pull``), and what digest and size the registry serves for
that tag right now.

Only the standard library is used (``http.client``, ``ssl``), so the client library keeps
no dependency on the daemon or on a third-party HTTP stack. Every failure is one of the
``RegistryError`` classes below with a one-line message naming the reference.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import re
import ssl
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "ACCEPTED_MEDIA_TYPES",
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "OCI_INDEX",
    "OCI_MANIFEST",
    "Manifest",
    "ManifestNotFoundError",
    "Reference",
    "ReferenceError",
    "RegistryAuthError",
    "RegistryClient",
    "RegistryError",
    "RegistryUnavailableError",
    "parse_reference",
]


class RegistryError(Exception):
    """Root of every error this module raises (also: digest mismatch, bad TLS, bad answer)."""


class ReferenceError(RegistryError):  # the agreed name; shadows the builtin in this module only
    """The text is not an image reference docker would accept (or lacks a required tag)."""


class ManifestNotFoundError(RegistryError):
    """The registry has no manifest for the tag (or no such repository)."""


class RegistryAuthError(RegistryError):
    """The registry (or its token server) refused the credentials, or none were given."""


class RegistryUnavailableError(RegistryError):
    """The registry could not be reached or answered 5xx/429: retrying later may work."""


# --------------------------------------------------------------------------- references
# docker/distribution reference grammar (reference/regexp.go).
_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]*)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|{_IPV6})(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"

_DOMAIN_RE = re.compile(rf"^{_DOMAIN}$")
_PATH_RE = re.compile(rf"^{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*$")
_TAG_RE = re.compile(rf"^{_TAG}$", re.ASCII)
_DIGEST_RE = re.compile(rf"^{_DIGEST}$")
_HEX64_RE = re.compile(r"^[a-f0-9]{64}$")

NAME_TOTAL_LENGTH_MAX = 255
DEFAULT_DOMAIN = "docker.io"
_LEGACY_DEFAULT_DOMAIN = "index.docker.io"
_DEFAULT_API_HOST = "registry-1.docker.io"
_OFFICIAL_REPO_PREFIX = "library/"


@dataclass(frozen=True)
class Reference:
    """A normalised image reference: registry host, repository path and tag.

    ``digest`` is set only when ``parse_reference(..., require_tag=False)`` was given a
    ``name@sha256:...`` reference; signing always needs a tag.
    """

    registry: str
    repository: str
    tag: str
    digest: str = ""

    @property
    def gun(self) -> str:
        """The Globally Unique Name notary stores this image's trust data under."""
        return f"{self.registry}/{self.repository}"

    def __str__(self) -> str:
        text = self.gun
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def _split_domain(name: str) -> tuple[str, str]:
    """Split off the registry host the way docker does (splitDockerDomain)."""
    first, sep, rest = name.partition("/")
    if not sep or (
        not any(c in first for c in ".:") and first != "localhost" and first.lower() == first
    ):
        domain, remainder = DEFAULT_DOMAIN, name
    else:
        domain, remainder = first, rest
    if domain == _LEGACY_DEFAULT_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in remainder:
        remainder = _OFFICIAL_REPO_PREFIX + remainder
    return domain, remainder


def parse_reference(text: str, *, require_tag: bool = True) -> Reference:
    """Parse ``[host[:port]/]path[:tag][@digest]`` as docker does, normalised.

    A missing host means docker.io, and a single-component docker.io name gets the
    ``library/`` prefix, so ``app:1.0`` is ``docker.io/library/app:1.0``. The repository
    path must be lowercase. With ``require_tag`` (the default: signing and revoking name
    a tag) a missing tag or any digest is a ``ReferenceError``; otherwise the tag may be
    absent and a digest is kept in ``Reference.digest``.
    """
    original = text
    text = text.strip()

    def bad(why: str) -> ReferenceError:
        return ReferenceError(f"invalid image reference {original!r}: {why}")

    if not text:
        raise bad("empty reference")
    if any(c.isspace() for c in text):
        raise bad("contains whitespace")
    name, at, digest = text.partition("@")
    if at:
        if require_tag:
            raise bad("digest references are not accepted here; name the image by tag")
        if not _DIGEST_RE.match(digest):
            raise bad(f"invalid digest {digest!r}")
    # A tag follows the last ':' that comes after the last '/' (a ':' before that is a port).
    tag = ""
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
        if not _TAG_RE.match(tag):
            raise bad(f"invalid tag {tag!r} (allowed: [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})")
    if not name:
        raise bad("missing repository name")
    if require_tag and not tag:
        raise bad("a tag is required (e.g. app:1.0)")
    if _HEX64_RE.match(name):
        raise bad("cannot be a 64-character hexadecimal string (that is an image ID)")
    domain, path = _split_domain(name)
    if not _DOMAIN_RE.match(domain):
        raise bad(f"invalid registry host {domain!r}")
    if path != path.lower():
        raise bad("repository name must be lowercase")
    if not _PATH_RE.match(path):
        raise bad(f"invalid repository name {path!r}")
    if len(domain) + 1 + len(path) > NAME_TOTAL_LENGTH_MAX:
        raise bad(f"repository name longer than {NAME_TOTAL_LENGTH_MAX} characters")
    return Reference(registry=domain, repository=path, tag=tag, digest=digest)


# --------------------------------------------------------------------------- manifests
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
ACCEPTED_MEDIA_TYPES = (DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_MANIFEST, OCI_INDEX)

_DIGEST_VALUE_RE = re.compile(r"^(sha256:[a-f0-9]{64}|sha384:[a-f0-9]{96}|sha512:[a-f0-9]{128})$")
_MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # distribution's own limit for a manifest PUT
_MAX_REDIRECTS = 5


@dataclass(frozen=True)
class Manifest:
    """What a tag points to: the digest and size notary records as the target."""

    digest: str
    size: int
    media_type: str


@dataclass
class _Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


@dataclass
class _Challenge:
    scheme: str  # "bearer" or "basic"
    params: dict[str, str] = field(default_factory=dict)


_PARAM_RE = re.compile(r'([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]*))')


def _parse_challenges(headers: http.client.HTTPMessage) -> list[_Challenge]:
    """The ``WWW-Authenticate`` challenges we understand, Bearer first."""
    found: list[_Challenge] = []
    for value in headers.get_all("WWW-Authenticate") or []:
        scheme, _, rest = value.strip().partition(" ")
        scheme = scheme.lower()
        if scheme not in ("bearer", "basic"):
            continue
        params = {
            m.group(1).lower(): (
                re.sub(r"\\(.)", r"\1", m.group(2)) if m.group(2) is not None else m.group(3)
            )
            for m in _PARAM_RE.finditer(rest)
        }
        found.append(_Challenge(scheme, params))
    found.sort(key=lambda c: c.scheme != "bearer")
    return found


class RegistryClient:
    """Resolves tags to manifest digests through the Docker Registry HTTP API v2.

    ``scheme`` is "https" (verified against the system CAs, or ``ca_file`` when given) or
    "http" for a plain local registry. ``username``/``password`` answer a Basic challenge
    or are sent to the token server of a Bearer challenge; without them only anonymous
    pulls work. Tokens are cached per realm, service and scope for the client's life.
    """

    def __init__(
        self,
        *,
        scheme: str = "https",
        ca_file: Path | None = None,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        if scheme not in ("https", "http"):
            raise ValueError(f"scheme must be 'https' or 'http', not {scheme!r}")
        self.scheme = scheme
        self.ca_file = ca_file
        self.username = username
        self.password = password
        self.timeout = timeout
        self._ssl = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        self._tokens: dict[tuple[str, str], str] = {}  # (registry, scope) -> bearer token

    # ----------------------------------------------------------------- public API
    def resolve(self, ref: Reference) -> Manifest:
        """The digest, size and media type of the manifest ``ref``'s tag points to now.

        HEAD first (no body to download); if the registry's HEAD answer lacks the digest
        or length, GET the manifest and compute both from the bytes, checking the
        registry's ``Docker-Content-Digest`` against them.
        """
        url = self._manifest_url(ref)
        headers = {"Accept": ", ".join(ACCEPTED_MEDIA_TYPES)}

        head = self._authorised("HEAD", url, headers, ref)
        if head.status == 200:
            manifest = self._from_head(head, ref)
            if manifest is not None:
                return manifest
        elif head.status not in (405, 400):
            self._raise_for_status(head, ref)

        return self.fetch_manifest(ref)[0]

    def fetch_manifest(self, ref: Reference) -> tuple[Manifest, bytes]:
        """GET the manifest ``ref`` names: its digest/size/type and the exact bytes served.

        The digest is computed from the bytes and must equal the registry's
        ``Docker-Content-Digest`` (and ``ref.digest`` when pinned), so the bytes are the
        ones the digest names.
        """
        url = self._manifest_url(ref)
        got = self._authorised("GET", url, {"Accept": ", ".join(ACCEPTED_MEDIA_TYPES)}, ref)
        if got.status != 200:
            self._raise_for_status(got, ref)
        return self._from_body(got, ref), got.body

    def _manifest_url(self, ref: Reference) -> str:
        if not ref.tag and not ref.digest:
            raise ReferenceError(f"{ref}: a tag is required to resolve a manifest")
        return (
            f"{self._base_url(ref.registry)}/v2/{ref.repository}/manifests/{ref.tag or ref.digest}"
        )

    # ----------------------------------------------------------------- answers
    def _from_head(self, resp: _Response, ref: Reference) -> Manifest | None:
        digest = (resp.headers.get("Docker-Content-Digest") or "").strip()
        length = (resp.headers.get("Content-Length") or "").strip()
        media_type = _media_type(resp.headers.get("Content-Type"))
        # Notary records sha256: a registry reporting another algorithm is asked for the body.
        if not (_DIGEST_VALUE_RE.match(digest) and digest.startswith("sha256:")):
            return None
        if not (length.isdigit() and media_type):
            return None
        self._check_media_type(media_type, ref)
        self._check_pinned(digest, ref)
        return Manifest(digest=digest, size=int(length), media_type=media_type)

    def _from_body(self, resp: _Response, ref: Reference) -> Manifest:
        body = resp.body
        claimed = (resp.headers.get("Docker-Content-Digest") or "").strip()
        algorithm = "sha256"
        if claimed:
            if not _DIGEST_VALUE_RE.match(claimed):
                raise RegistryError(f"{ref}: registry sent a malformed digest {claimed!r}")
            algorithm = claimed.partition(":")[0]
        digest = f"{algorithm}:{hashlib.new(algorithm, body).hexdigest()}"
        if claimed and claimed != digest:
            raise RegistryError(
                f"{ref}: manifest bytes hash to {digest} but the registry says {claimed}"
            )
        if algorithm != "sha256":
            digest = f"sha256:{hashlib.sha256(body).hexdigest()}"
        media_type = _media_type(resp.headers.get("Content-Type"))
        if media_type not in ACCEPTED_MEDIA_TYPES:
            try:
                declared = json.loads(body).get("mediaType")
            except (ValueError, AttributeError):
                declared = None
            if isinstance(declared, str) and declared:
                media_type = declared
        self._check_media_type(media_type, ref)
        self._check_pinned(digest, ref)
        return Manifest(digest=digest, size=len(body), media_type=media_type)

    @staticmethod
    def _check_media_type(media_type: str, ref: Reference) -> None:
        if media_type not in ACCEPTED_MEDIA_TYPES:
            raise RegistryError(
                f"{ref}: unsupported manifest media type {media_type or '(none)'!r}"
                " (schema 1 and unknown manifests cannot be signed)"
            )

    @staticmethod
    def _check_pinned(digest: str, ref: Reference) -> None:
        same_algorithm = ref.digest.partition(":")[0] == digest.partition(":")[0]
        if ref.digest and same_algorithm and ref.digest.lower() != digest:
            raise RegistryError(f"{ref}: registry served a manifest with digest {digest}")

    def _raise_for_status(self, resp: _Response, ref: Reference) -> None:
        status = resp.status
        detail = _error_detail(resp.body)
        suffix = f": {detail}" if detail else ""
        if status == 404:
            what = f"tag {ref.tag}" if ref.tag else f"digest {ref.digest}"
            raise ManifestNotFoundError(f"no manifest for {what} in {ref.gun}{suffix}")
        if status in (401, 403):
            raise RegistryAuthError(
                f"registry {ref.registry} refused access to {ref.gun} (HTTP {status}){suffix}"
            )
        if status >= 500 or status == 429:
            raise RegistryUnavailableError(
                f"registry {ref.registry} is unavailable (HTTP {status}) for {ref}{suffix}"
            )
        raise RegistryError(f"registry {ref.registry} answered HTTP {status} for {ref}{suffix}")

    # ----------------------------------------------------------------- auth
    def _authorised(
        self, method: str, url: str, headers: dict[str, str], ref: Reference
    ) -> _Response:
        """Send the request, answering one Bearer or Basic challenge if the registry asks."""
        default_scope = f"repository:{ref.repository}:pull"
        auth = self._cached_authorization(ref.registry, default_scope)
        resp = self._request(method, url, {**headers, **auth}, ref)
        if resp.status != 401:
            return resp
        challenges = _parse_challenges(resp.headers)
        if not challenges:
            return resp
        challenge = challenges[0]
        if challenge.scheme == "basic":
            if self.username is None:
                raise RegistryAuthError(
                    f"registry {ref.registry} requires credentials for {ref.gun}"
                    " (Basic auth) and none were given"
                )
            auth = {"Authorization": self._basic()}
        else:
            token = self._fetch_token(challenge, default_scope, ref)
            auth = {"Authorization": f"Bearer {token}"}
        return self._request(method, url, {**headers, **auth}, ref)

    def _cached_authorization(self, registry: str, scope: str) -> dict[str, str]:
        token = self._tokens.get((registry, scope))
        return {"Authorization": f"Bearer {token}"} if token else {}

    def _basic(self) -> str:
        pair = f"{self.username or ''}:{self.password or ''}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")

    def _fetch_token(self, challenge: _Challenge, default_scope: str, ref: Reference) -> str:
        """GET a bearer token from the challenge's realm (docker's token protocol)."""
        realm = challenge.params.get("realm", "")
        parsed = urllib.parse.urlsplit(realm)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise RegistryError(f"registry {ref.registry} sent an unusable token realm {realm!r}")
        service = challenge.params.get("service", "")
        scope = challenge.params.get("scope", "") or default_scope
        query = [("scope", s) for s in scope.split(" ") if s]
        if service:
            query.insert(0, ("service", service))
        if self.username:
            query.append(("account", self.username))
        sep = "&" if parsed.query else "?"
        url = realm + (sep + urllib.parse.urlencode(query) if query else "")
        headers = {"Accept": "application/json"}
        if self.username is not None:
            headers["Authorization"] = self._basic()
        resp = self._request("GET", url, headers, ref)
        if resp.status in (401, 403):
            why = "refused the credentials" if self.username is not None else "needs credentials"
            raise RegistryAuthError(
                f"token server {parsed.netloc} for {ref.registry} {why} (HTTP {resp.status})"
                f" pulling {ref.gun}"
            )
        if resp.status >= 500 or resp.status == 429:
            raise RegistryUnavailableError(
                f"token server {parsed.netloc} for {ref.registry} is unavailable"
                f" (HTTP {resp.status})"
            )
        if resp.status != 200:
            raise RegistryAuthError(
                f"token server {parsed.netloc} for {ref.registry} answered HTTP {resp.status}"
            )
        try:
            answer = json.loads(resp.body)
            token = answer.get("token") or answer.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise RegistryAuthError(f"token server {parsed.netloc} sent no token for {ref.gun}")
        self._tokens[(ref.registry, default_scope)] = token
        return token

    # ----------------------------------------------------------------- transport
    def _base_url(self, registry: str) -> str:
        host = _DEFAULT_API_HOST if registry == DEFAULT_DOMAIN else registry
        return f"{self.scheme}://{host}"

    def _request(self, method: str, url: str, headers: dict[str, str], ref: Reference) -> _Response:
        """One HTTP exchange (following redirects for GET/HEAD), errors as RegistryErrors."""
        for _ in range(_MAX_REDIRECTS + 1):
            resp = self._exchange(method, url, headers, ref)
            location = resp.headers.get("Location")
            if resp.status in (301, 302, 303, 307, 308) and location:
                new_url = urllib.parse.urljoin(url, location)
                if urllib.parse.urlsplit(new_url).netloc != urllib.parse.urlsplit(url).netloc:
                    # Credentials are for the registry, not wherever it redirects to.
                    headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
                url = new_url
                continue
            return resp
        raise RegistryError(f"registry {ref.registry}: too many redirects for {ref}")

    def _exchange(
        self, method: str, url: str, headers: dict[str, str], ref: Reference
    ) -> _Response:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        conn: http.client.HTTPConnection
        if parts.scheme == "https":
            conn = http.client.HTTPSConnection(
                host, parts.port, timeout=self.timeout, context=self._ssl
            )
        else:
            conn = http.client.HTTPConnection(host, parts.port, timeout=self.timeout)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        where = parts.netloc
        try:
            conn.request(method, target, headers={"User-Agent": "signer-trust", **headers})
            raw = conn.getresponse()
            body = raw.read(_MAX_MANIFEST_BYTES + 1) if method != "HEAD" else b""
            if len(body) > _MAX_MANIFEST_BYTES:
                raise RegistryError(f"{where} sent more than {_MAX_MANIFEST_BYTES} bytes for {ref}")
            return _Response(raw.status, raw.headers, body)
        except ssl.SSLCertVerificationError as exc:
            raise RegistryError(
                f"TLS verification of {where} failed for {ref}: {exc.verify_message}"
            ) from None
        except ssl.SSLError as exc:
            raise RegistryError(
                f"TLS with {where} failed for {ref}: {exc.reason or exc.__class__.__name__}"
            ) from None
        except TimeoutError:
            raise RegistryUnavailableError(
                f"{where} did not answer within {self.timeout:g}s for {ref}"
            ) from None
        except ConnectionRefusedError:
            raise RegistryUnavailableError(f"{where} refused the connection for {ref}") from None
        except (OSError, http.client.HTTPException) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
            raise RegistryUnavailableError(f"{where} is unreachable for {ref}: {reason}") from None
        finally:
            conn.close()


def _media_type(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().lower()


def _error_detail(body: bytes) -> str:
    """The first message of a registry error body ({"errors": [{"code", "message"}]})."""
    try:
        errors = json.loads(body).get("errors") or []
        first = errors[0]
        text = str(first.get("message") or first.get("code") or "")
    except (ValueError, AttributeError, IndexError, TypeError):
        # Not a registry error body (a proxy, or HTTP sent to a TLS port): its first line.
        lines = body[:200].decode("utf-8", "replace").strip().splitlines()
        text = lines[0] if lines and lines[0].isprintable() else ""
    return " ".join(text.split())[:200]
