"""Offline signing: keys that never touch a network (an air-gapped root ceremony).

``sign --export ROLE FILE`` writes ``FILE``, the exact canonical bytes of the staged
role (what a signature covers, byte for byte, so any tool can sign it), and
``FILE.json``, what is still missing: the role and version, the sha256 of the bytes,
and per threshold the keys that have not signed yet. Nothing in the repository changes.

``sign --import SIGFILE`` takes signatures made elsewhere. Each one is verified against
the key the role lists, over the bytes staged now, before anything is written: a
signature by a key the role does not use, over other bytes (the role was staged again
since the export), or in a malformed file refuses the whole import and changes nothing.

SIGFILE is JSON: a securesystemslib signature (``{"keyid": ..., "sig": ...}``), a list
of them, or ``{"role": ROLE, "version": N, "signatures": [...]}`` (``FILE.json`` with
its ``signatures`` list filled in is such a file). ``role`` and ``version``, when given,
must name the staged role; without them the role is found by the signature.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from securesystemslib.exceptions import UnverifiedSignatureError
from securesystemslib.signer import Signature

from signer_client.repo.daemon_keys import DaemonKeys
from signer_client.repo.errors import RepositoryError
from signer_client.repo.external import key_ref
from signer_client.repo.repository import Repository

REQUEST_TYPE = "tuf-repo/signing-request"


class OfflineSigningError(RepositoryError):
    """An export or import that cannot be done; the repository is left as it was."""


@dataclass(frozen=True)
class Imported:
    """One signature taken in."""

    role: str
    version: int
    key_id: str
    new: bool  # False: the role already carried exactly this signature


def export_request(repo: Repository, role: str, path: Path) -> dict[str, Any]:
    """Write the bytes to sign to ``path`` and what is missing to ``path``.json."""
    if role not in repo.staged_roles():
        raise OfflineSigningError(
            f"{role} has no staged changes to sign (stage them first, e.g. `rotate` or `bump`)"
        )
    md = repo.current(role)
    assert md is not None
    payload = md.signed_bytes
    thresholds = []
    for check in repo.checks(role, md):
        thresholds.append(
            {
                "label": check.label,
                "threshold": check.threshold,
                "signed": check.signed,
                "missing": check.missing,
                "keys": {
                    key_id: {
                        **repo._key(role, key_id).to_dict(),
                        "uri": repo.config.key_uris.get(key_id, ""),
                    }
                    for key_id in check.unsigned
                },
            }
        )
    request = {
        "_type": REQUEST_TYPE,
        "role": role,
        "version": md.signed.version,
        "payload_file": path.name,
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
        "payload_length": len(payload),
        "thresholds": thresholds,
        "signatures": [],
    }
    path.write_bytes(payload)
    request_path(path).write_text(json.dumps(request, indent=2) + "\n")
    return request


def request_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def import_signatures(repo: Repository, path: Path) -> list[Imported]:
    """Verify every signature in ``path``, then add them all (or none)."""
    role_hint, version_hint, signatures = _read_signature_file(path)
    staged = repo.staged_roles()
    if role_hint is not None and role_hint not in staged:
        raise OfflineSigningError(f"{path.name}: {role_hint} has no staged changes to sign")
    accepted: list[tuple[str, Signature]] = []
    for signature in signatures:
        role = _role_for(repo, signature, [role_hint] if role_hint else staged, version_hint)
        accepted.append((role, signature))
    out = []
    for role, signature in accepted:
        md = repo.current(role)
        assert md is not None
        old = md.signatures.get(signature.keyid)
        md.signatures[signature.keyid] = signature
        out.append(Imported(role, md.signed.version, signature.keyid, old != signature))
    for role in {role for role, _ in accepted}:
        md = repo.current(role)
        assert md is not None
        repo.store.write_staged(role, md)
    return out


def _role_for(
    repo: Repository, signature: Signature, candidates: Sequence[str], version: int | None
) -> str:
    """The staged role this signature is for; refuses one that verifies nowhere."""
    short = signature.keyid[:8]
    reasons = []
    for role in candidates:
        md = repo.current(role)
        assert md is not None
        if version is not None and md.signed.version != version:
            reasons.append(f"it is for {role} v{version} but v{md.signed.version} is staged")
            continue
        wanted = {k for check in repo.checks(role, md) for k in [*check.signed, *check.unsigned]}
        if signature.keyid not in wanted:
            reasons.append(f"key {short} is not a key of {role} v{md.signed.version}")
            continue
        try:
            repo._key(role, signature.keyid).verify_signature(signature, md.signed_bytes)
        except UnverifiedSignatureError:
            reasons.append(
                f"it does not verify over staged {role} v{md.signed.version} "
                "(wrong bytes, or staged again since the export?)"
            )
            continue
        return role
    why = "; ".join(reasons) if reasons else "no role is staged"
    raise OfflineSigningError(f"signature by key {short} refused, nothing imported: {why}")


def _read_signature_file(path: Path) -> tuple[str | None, int | None, list[Signature]]:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise OfflineSigningError(f"{path}: {exc.strerror or exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise OfflineSigningError(f"{path}: not JSON ({exc})") from None
    role: str | None = None
    version: int | None = None
    items: Any = data
    if isinstance(data, dict) and "signatures" in data:
        role, version, items = data.get("role"), data.get("version"), data["signatures"]
        if (role is not None and not isinstance(role, str)) or (
            version is not None and not isinstance(version, int)
        ):
            raise OfflineSigningError(f"{path}: 'role' must be a string, 'version' an integer")
    elif isinstance(data, dict):
        items = [data]
    if not isinstance(items, list) or not items:
        raise OfflineSigningError(f"{path}: no signatures in it")
    signatures = []
    for item in items:
        try:
            signature = Signature.from_dict(dict(item))
            bytes.fromhex(signature.signature)
        except (TypeError, KeyError, ValueError, AttributeError):
            raise OfflineSigningError(
                f'{path}: want signatures as {{"keyid": HEX, "sig": HEX}}'
            ) from None
        signatures.append(signature)
    return role, version, signatures


def use_uris(repo: Repository, uris: Sequence[str], daemon: DaemonKeys | None) -> list[str]:
    """Remember private key URIs for keys the repository already lists (``sign --uri``).

    For a key that moved (a file key imported into an HSM, a key added as ``offline:``
    whose holder now has it online), or the old keys of an adopted repository.
    """
    known = key_ids_in_use(repo)
    refs = [key_ref(uri, None, daemon) for uri in uris]
    for ref in refs:
        if ref.key_id not in known:
            raise OfflineSigningError(
                f"{ref.uri} is key {ref.key_id[:8]}, which no role of this repository uses"
            )
    for ref in refs:
        repo.config.key_uris[ref.key_id] = ref.uri
    repo.store.save_config(repo.config)
    return [ref.key_id for ref in refs]


def key_ids_in_use(repo: Repository) -> set[str]:
    """Every key ID the current metadata lists (root's keys and all delegation keys)."""
    found: set[str] = set()
    for role in repo.all_roles():
        md = repo.current(role)
        if md is None:
            continue
        if role == "root":
            found.update(md.signed.keys)
            previous = repo.published("root")
            if previous is not None:
                found.update(previous.signed.keys)
        elif role not in ("snapshot", "timestamp") and md.signed.delegations is not None:
            found.update(md.signed.delegations.keys)
    return found
