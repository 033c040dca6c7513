"""What the client keeps on disk: trusted roots and pending root ceremonies; never a key.

Layout under the trust directory (``~/.signer-trust`` by default):

    tuf/<GUN>/root.json      the last root this client verified (trust on first use)
    pending/<GUN>.json       a root ceremony waiting for quorum approvals

A root is saved only after it verified; a pending ceremony holds the exact unsigned
metadata whose bytes the approvers approve, so resuming signs what they saw.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class TrustDirError(Exception):
    """The trust directory cannot be used (bad GUN path, unreadable file)."""


def default_trust_dir() -> Path:
    return Path(os.environ.get("SIGNER_TRUST_DIR", Path.home() / ".signer-trust"))


@dataclass
class PendingCeremony:
    """A publish held back until a quorum root key's request is approved."""

    operation: str  # "init" or "rotate-root"
    files: dict[str, bytes]  # role -> envelope bytes (root not yet fully signed)
    requests: dict[str, str]  # daemon key_id -> request_id, for root
    notary_ids: dict[str, str]  # daemon key_id -> the key ID its root signature goes by
    retire_after: list[str] = field(default_factory=list)  # daemon key_ids
    created: list[str] = field(default_factory=list)  # daemon key_ids made by this operation
    local_snapshot: bool = False  # the snapshot key is in the daemon: sign a snapshot too

    def to_json(self) -> dict[str, Any]:
        return {
            "operation": self.operation,
            "files": {r: base64.b64encode(b).decode() for r, b in self.files.items()},
            "requests": self.requests,
            "notary_ids": self.notary_ids,
            "retire_after": self.retire_after,
            "created": self.created,
            "local_snapshot": self.local_snapshot,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PendingCeremony:
        return cls(
            operation=str(data["operation"]),
            files={str(r): base64.b64decode(b) for r, b in data["files"].items()},
            requests={str(k): str(v) for k, v in data["requests"].items()},
            notary_ids={str(k): str(v) for k, v in data["notary_ids"].items()},
            retire_after=[str(k) for k in data.get("retire_after", [])],
            created=[str(k) for k in data.get("created", [])],
            local_snapshot=bool(data.get("local_snapshot", False)),
        )


class TrustDir:
    def __init__(self, path: Path) -> None:
        self.path = path

    def _gun_dir(self, base: str, gun: str) -> Path:
        parts = gun.split("/")
        if not gun or any(p in ("", ".", "..") for p in parts) or "\\" in gun or "\0" in gun:
            raise TrustDirError(f"{gun!r} is not a repository name (GUN)")
        return self.path / base / gun

    def trusted_root(self, gun: str) -> bytes | None:
        path = self._gun_dir("tuf", gun) / "root.json"
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise TrustDirError(f"cannot read {path}: {exc.strerror}") from None

    def save_root(self, gun: str, data: bytes) -> None:
        _write(self._gun_dir("tuf", gun) / "root.json", data)

    def forget(self, gun: str) -> None:
        shutil.rmtree(self._gun_dir("tuf", gun), ignore_errors=True)
        self.clear_pending(gun)

    def pending(self, gun: str) -> PendingCeremony | None:
        path = self._pending_path(gun)
        try:
            return PendingCeremony.from_json(json.loads(path.read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise TrustDirError(f"cannot read pending ceremony {path}: {exc}") from None

    def save_pending(self, gun: str, ceremony: PendingCeremony) -> None:
        _write(self._pending_path(gun), json.dumps(ceremony.to_json(), indent=2).encode())

    def clear_pending(self, gun: str) -> None:
        self._pending_path(gun).unlink(missing_ok=True)

    def _pending_path(self, gun: str) -> Path:
        where = self._gun_dir("pending", gun)
        return where.with_name(where.name + ".json")


def _write(path: Path, data: bytes) -> None:
    """Atomically: a crash leaves the old file or the new one, never half of either."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
