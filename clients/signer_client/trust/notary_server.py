"""A client for notary-server's HTTP API (the subset notary's own client uses).

Routes (notary ``server/server.go``), all under ``/v2/{gun}/_trust/tuf/``:

- ``GET {role}.json``, ``GET {version}.{role}.json``, ``GET {role}.{sha256}.json``;
- ``GET {snapshot|timestamp}.key``: the server's public key for the role, created on
  first request; ``POST`` the same path rotates it (a new key every time);
- ``POST`` the directory: an atomic publish, ``multipart/form-data`` with one part per
  file, each ``Content-Disposition: form-data; name="files"; filename="<role>"``
  (``storage.NewMultiPartMetaRequest``). The server validates the set, then signs a new
  snapshot (unless one was sent) and a new timestamp;
- ``DELETE`` the directory: drop the GUN's trust data.

Errors come back as docker/distribution errcode JSON,
``{"errors": [{"code": ..., "message": ..., "detail": ...}]}``. A stale or concurrent
publish is ``400 VERSION`` ("A newer version of metadata is already available", from the
storage layer's ``ErrOldVersion``) or, for a root that does not increment,
``400 INVALID_UPDATE`` with ``ErrBadRoot`` "Root modifications must increment the
version": both map to :class:`ConflictError`. Other validation failures are
``400 INVALID_UPDATE`` whose ``detail`` is ``{"Name": "ErrBadTargets", "Error": {"Msg":
...}}``; they map to :class:`RejectedError` with that message.

Standard library only (``urllib``), so a CLI built on it needs nothing beyond
``cryptography``.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from signer_client.trust.metadata import MetadataError, PublicKey

__all__ = [
    "ConflictError",
    "NotaryServerClient",
    "NotaryServerError",
    "RejectedError",
    "RepositoryNotFoundError",
    "ServerUnavailableError",
    "UnauthorizedError",
]

MAX_ERROR_BODY = 64 << 10
MAX_METADATA = 100 << 20  # notary.MaxDownloadSize


class NotaryServerError(Exception):
    """Root of every error talking to notary-server; ``status`` is the HTTP status
    (0 when there was no response), ``code`` notary's error code when it sent one."""

    def __init__(self, message: str, *, status: int = 0, code: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class RepositoryNotFoundError(NotaryServerError):
    """404: the GUN has no trust data (or not that file / version)."""


class UnauthorizedError(NotaryServerError):
    """401/403: no or wrong credentials, or no access to the GUN."""


class ConflictError(NotaryServerError):
    """The publish is stale: the server already holds that version (someone else
    published first). Fetch, re-apply, re-sign, publish again."""


class RejectedError(NotaryServerError):
    """The server refused the request as invalid (notary's message says why)."""


class ServerUnavailableError(NotaryServerError):
    """No usable answer: connection refused, timed out, or a 5xx."""


_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


class NotaryServerClient:
    """One notary-server, over HTTPS (or HTTP for tests) with optional token auth.

    Credentials are used only when the server asks: a ``401`` with ``WWW-Authenticate:
    Bearer realm=...,service=...,scope=...`` makes the client fetch a token from the
    realm with HTTP basic auth and retry once (a ``Basic`` challenge is answered with
    basic auth directly). Tokens are cached per scope.
    """

    def __init__(
        self,
        url: str,
        *,
        ca_file: Path | None = None,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.username = username
        self.password = password
        self.timeout = timeout
        self._context: ssl.SSLContext | None = None
        if self.url.startswith("https://"):
            self._context = ssl.create_default_context(
                cafile=str(ca_file) if ca_file is not None else None
            )
        self._tokens: dict[str, str] = {}
        self._basic = False

    # -- the API ----------------------------------------------------------------------------

    def get(self, gun: str, role: str) -> bytes:
        """The current ``role`` file (``"root"``, ``"targets/releases"``...), or a stored
        version (``"3.root"``) or checksum (``"root.<sha256>"``): the exact bytes."""
        return self._request("GET", gun, f"{role}.json", what=role, limit=MAX_METADATA)

    def get_key(self, gun: str, role: str) -> PublicKey:
        """The server's public key for ``role`` (snapshot or timestamp); the server
        creates it on the first request."""
        return self._key(self._request("GET", gun, f"{role}.key", what=f"{role} key"), role)

    def rotate_key(self, gun: str, role: str) -> PublicKey:
        """Have the server make a new key for ``role``; returns its public key. The
        new key signs only after a root listing it is published."""
        return self._key(self._request("POST", gun, f"{role}.key", what=f"{role} key"), role)

    def publish(self, gun: str, files: Mapping[str, bytes]) -> None:
        """Atomically upload ``files`` (role -> file bytes, e.g. ``{"targets": ...}``);
        the server adds a snapshot (unless given) and a timestamp."""
        if not files:
            raise ValueError("publish needs at least one file")
        boundary = uuid.uuid4().hex
        body = bytearray()
        for role, data in files.items():
            name = role.replace("\\", "\\\\").replace('"', '\\"')
            body += (
                f"--{boundary}\r\n"
                f'Content-Disposition: form-data; name="files"; filename="{name}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n"
            ).encode()
            body += data + b"\r\n"
        body += f"--{boundary}--\r\n".encode()
        self._request(
            "POST",
            gun,
            "",
            what="publish",
            body=bytes(body),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )

    def delete(self, gun: str) -> None:
        """Delete all of the GUN's trust data on the server."""
        self._request("DELETE", gun, "", what="delete")

    # -- plumbing ---------------------------------------------------------------------------

    def _key(self, body: bytes, role: str) -> PublicKey:
        try:
            return PublicKey.from_dict(json.loads(body), f"{role} key")
        except (ValueError, MetadataError) as exc:
            raise NotaryServerError(f"notary-server sent an unreadable {role} key: {exc}") from exc

    def _url(self, gun: str, name: str) -> str:
        return f"{self.url}/v2/{urllib.parse.quote(gun)}/_trust/tuf/{urllib.parse.quote(name)}"

    def _request(
        self,
        method: str,
        gun: str,
        name: str,
        *,
        what: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        limit: int = 1 << 20,
    ) -> bytes:
        url = self._url(gun, name)
        label = f"{gun}: {what}"
        retried = False
        while True:
            request = urllib.request.Request(url, data=body, method=method)
            for key, value in (headers or {}).items():
                request.add_header(key, value)
            auth = self._auth_header(url)
            if auth:
                request.add_header("Authorization", auth)
            try:
                with urllib.request.urlopen(
                    request, timeout=self.timeout, context=self._context
                ) as resp:
                    data: bytes = resp.read(limit + 1)
                    if len(data) > limit:
                        raise NotaryServerError(f"{label}: response larger than {limit} bytes")
                    return data
            except urllib.error.HTTPError as exc:
                if exc.code == 401 and not retried and self._answer_challenge(exc, url, label):
                    retried = True
                    continue
                raise self._http_error(exc, label) from None
            except (urllib.error.URLError, OSError) as exc:
                raise self._network_error(exc, label) from None

    def _auth_header(self, url: str) -> str | None:
        scope_key = self._scope_for(url)
        if scope_key in self._tokens:
            return f"Bearer {self._tokens[scope_key]}"
        if self._basic and self.username is not None:
            raw = f"{self.username}:{self.password or ''}".encode()
            return "Basic " + base64.b64encode(raw).decode()
        return None

    def _scope_for(self, url: str) -> str:
        return url.split("/_trust/", 1)[0]

    def _answer_challenge(self, exc: urllib.error.HTTPError, url: str, what: str) -> bool:
        """Get what the 401 asks for; False if we cannot (no credentials, no challenge)."""
        if self.username is None:
            return False
        challenge = exc.headers.get("WWW-Authenticate", "") if exc.headers else ""
        scheme, _, rest = challenge.partition(" ")
        if scheme.lower() == "basic":
            self._basic = True
            return True
        if scheme.lower() != "bearer":
            return False
        params = dict(_CHALLENGE_PARAM.findall(rest))
        realm = params.get("realm")
        if not realm:
            return False
        query = {k: params[k] for k in ("service", "scope") if k in params}
        token_url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(query)
        request = urllib.request.Request(token_url)
        raw = f"{self.username}:{self.password or ''}".encode()
        request.add_header("Authorization", "Basic " + base64.b64encode(raw).decode())
        label = f"{what}: token from {realm} for {self.url}"
        try:
            with urllib.request.urlopen(
                request, timeout=self.timeout, context=self._context
            ) as resp:
                answer = json.loads(resp.read(MAX_ERROR_BODY))
        except urllib.error.HTTPError as err:
            if err.code in (401, 403):
                raise UnauthorizedError(
                    f"{label}: credentials refused (HTTP {err.code})", status=err.code
                ) from None
            raise self._http_error(err, label) from None
        except (urllib.error.URLError, OSError) as err:
            raise self._network_error(err, label) from None
        except ValueError:
            raise NotaryServerError(f"{label}: not a JSON token response") from None
        token = (
            answer.get("token") or answer.get("access_token") if isinstance(answer, dict) else None
        )
        if not isinstance(token, str) or not token:
            raise NotaryServerError(f"{label}: no token in the response")
        self._tokens[self._scope_for(url)] = token
        return True

    def _http_error(self, exc: urllib.error.HTTPError, label: str) -> NotaryServerError:
        status = exc.code
        try:
            raw = exc.read(MAX_ERROR_BODY)
        except OSError:
            raw = b""
        code, message = _errcode(raw)
        where = f"{label}: {self.url}"
        if status == 404:
            return RepositoryNotFoundError(
                f"{label}: not found on {self.url}", status=status, code=code
            )
        if status in (401, 403):
            why = "authentication required" if status == 401 else "access denied"
            return UnauthorizedError(f"{where} {why} (HTTP {status})", status=status, code=code)
        if code == "VERSION" or "must increment the version" in message:
            return ConflictError(
                f"{label}: stale update, the server already has a newer version ({message})",
                status=status,
                code=code,
            )
        if 400 <= status < 500:
            text = message or raw.decode(errors="replace").strip()[:200] or f"HTTP {status}"
            return RejectedError(f"{label}: rejected: {text}", status=status, code=code)
        text = f": {message}" if message else ""
        return ServerUnavailableError(
            f"{where} failed (HTTP {status}{text})", status=status, code=code
        )

    def _network_error(self, exc: BaseException, label: str) -> NotaryServerError:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        if isinstance(reason, ssl.SSLCertVerificationError):
            return NotaryServerError(
                f"{label}: TLS verification of {self.url} failed: {reason.verify_message}"
            )
        if isinstance(reason, ssl.SSLError):
            return NotaryServerError(f"{label}: TLS with {self.url} failed: {reason.reason}")
        if isinstance(reason, socket.timeout | TimeoutError):
            return ServerUnavailableError(f"{label}: {self.url} timed out after {self.timeout}s")
        text = getattr(reason, "strerror", None) or str(reason)
        return ServerUnavailableError(f"{label}: cannot reach {self.url}: {text}")


def _errcode(raw: bytes) -> tuple[str, str]:
    """(code, message) from an errcode body; the message is the validation detail's
    when there is one (it says what failed), else the generic one."""
    try:
        body: Any = json.loads(raw)
        first = body["errors"][0]
    except (ValueError, KeyError, IndexError, TypeError):
        return "", ""
    if not isinstance(first, dict):
        return "", ""
    code = str(first.get("code", ""))
    message = str(first.get("message", ""))
    detail = first.get("detail")
    if isinstance(detail, dict):
        error = detail.get("Error")
        name = detail.get("Name", "")
        if isinstance(error, dict) and error.get("Msg"):
            message = f"{_DETAIL_PREFIX.get(name, '')}{error['Msg']}"
    elif isinstance(detail, str) and detail:
        message = f"{message} {detail}".strip()
    return code, " ".join(message.split())


_DETAIL_PREFIX = {
    "ErrBadRoot": "invalid root: ",
    "ErrBadTargets": "invalid targets: ",
    "ErrBadSnapshot": "invalid snapshot: ",
    "ErrBadHierarchy": "incomplete metadata: ",
    "ErrValidation": "validation failed: ",
}
