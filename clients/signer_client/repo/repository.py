"""The repository logic of ``tuf-repo``: edit, sign and publish TUF metadata.

Built on python-tuf's Metadata API. No printing and no argument parsing here; file IO
goes through ``RepoStore`` and signing through private key URIs (``signing.py``).

Versioning rules, chosen so that a daemon enforcing TUF payload rules (versions never go
backwards; never two different payloads at one version) always agrees:

* the first edit of a published role stages it at published version + 1;
* editing a staged role that already carries signatures bumps its version again and drops
  the signatures (they covered other bytes); unsigned staged edits keep the version;
* an edit that changes nothing changes nothing (no bump, signatures kept);
* root versions must be consecutive, so a partly signed staged root cannot be edited:
  publish it (or finish signing it) first.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from securesystemslib.signer import Key, Signature
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    SuccinctRoles,
    TargetFile,
    Targets,
    Timestamp,
    VerificationResult,
)

from signer_client.repo.errors import RepositoryError, UnderSignedError
from signer_client.repo.files import check_target_path
from signer_client.repo.model import (
    PublishResult,
    RoleSpec,
    RoleStatus,
    ThresholdCheck,
)
from signer_client.repo.signing import KeyRef, SigningStats, sign_all
from signer_client.repo.store import RepoConfig, RepoStore, check_role_name

TOP_LEVEL = ("root", "targets", "snapshot", "timestamp")
ONLINE = ("snapshot", "timestamp")
DAY = 24 * 3600
DEFAULT_EXPIRY = {"root": 365 * DAY, "targets": 90 * DAY, "snapshot": 7 * DAY, "timestamp": DAY}

Progress = Callable[[int, int], None]


def utc_now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


class Repository:
    """One repository directory, opened for editing."""

    def __init__(self, store: RepoStore, now: Callable[[], datetime] = utc_now) -> None:
        self.store = store
        self.config = store.load_config() if store.exists() else RepoConfig()
        self.now = now
        self.stats = SigningStats()
        self._staged = set(store.staged_roles())
        self._current: dict[str, Metadata[Any] | None] = {}
        self._published: dict[str, Metadata[Any] | None] = {}
        self._bin_top: int | None = None  # highest hash-bin version (see _next_version)

    # -- reading -------------------------------------------------------------------------

    def published(self, role: str) -> Metadata[Any] | None:
        """The role as clients see it now (None if never published)."""
        if role not in self._published:
            self._published[role] = self._read_published(role)
        return self._published[role]

    def _read_published(self, role: str) -> Metadata[Any] | None:
        if role == "root":
            versions = self.store.root_versions()
            return self.store.read_published("root", versions[-1]) if versions else None
        if role == "timestamp":
            return self.store.read_published("timestamp", 0)
        if role == "snapshot":
            ts = self.published("timestamp")
            return (
                self.store.read_published("snapshot", ts.signed.snapshot_meta.version)
                if ts
                else None
            )
        snapshot = self.published("snapshot")
        meta = snapshot.signed.meta.get(f"{role}.json") if snapshot else None
        return self.store.read_published(role, meta.version) if meta else None

    def current(self, role: str) -> Metadata[Any] | None:
        """The staged copy if there is one, else the published one."""
        if role not in self._current:
            staged = self.store.read_staged(role) if role in self._staged else None
            self._current[role] = staged or self.published(role)
        return self._current[role]

    def staged_roles(self) -> list[str]:
        return sorted(self._staged)

    def expiry(self, role: str) -> timedelta:
        seconds = self.config.expiry_seconds
        default = "targets" if role not in TOP_LEVEL else role
        return timedelta(seconds=seconds.get(role, seconds.get(default, DEFAULT_EXPIRY[default])))

    def _signed(self, role: str) -> Any:
        md = self.current(role)
        if md is None:
            raise RepositoryError(f"no role {role!r} in this repository")
        return md.signed

    def find_delegation(self, role: str) -> tuple[str, SuccinctRoles | None]:
        """(delegating role, its SuccinctRoles if ``role`` is a bin or the bin prefix)."""
        queue, seen = ["targets"], {"targets"}
        while queue:
            name = queue.pop(0)
            delegations = self._signed(name).delegations
            if delegations is None:
                continue
            succinct = delegations.succinct_roles
            if succinct is not None and (
                role == succinct.name_prefix or succinct.is_delegated_role(role)
            ):
                return name, succinct
            if delegations.roles:
                if role in delegations.roles:
                    return name, None
                queue.extend(r for r in delegations.roles if r not in seen)
                seen.update(delegations.roles)
        raise RepositoryError(f"no role delegates to {role!r}")

    def all_roles(self) -> list[str]:
        roles = list(TOP_LEVEL)
        queue = ["targets"]
        while queue:
            delegations = self._signed(queue.pop(0)).delegations
            if delegations is None:
                continue
            if delegations.succinct_roles is not None:
                roles.extend(delegations.succinct_roles.get_roles())
            for name in delegations.roles or {}:
                if name not in roles:  # a delegation back up the tree is listed once
                    roles.append(name)
                    queue.append(name)
        return roles

    # -- editing -------------------------------------------------------------------------

    @contextmanager
    def edit(self, role: str, force: bool = False, new: Any = None) -> Iterator[Any]:
        """Edit a role's ``signed`` in place; staged with the versioning rules above."""
        check_role_name(role)
        md = copy.deepcopy(self.current(role))
        if md is None:
            if new is None:
                raise RepositoryError(f"no role {role!r} in this repository")
            md, force = Metadata(new), True
        before = md.signed.to_dict()
        yield md.signed
        if not force and md.signed.to_dict() == before:
            return
        staged = role in self._staged
        current = self.current(role)
        if not staged:
            published = self.published(role)
            md.signed.version = self._next_version(
                role, (published.signed.version if published else 0) + 1
            )
        elif current is not None and current.signatures:
            if role == "root":
                raise RepositoryError(
                    f"root v{current.signed.version} is staged with signatures; root versions "
                    "must be consecutive: publish it before changing root again"
                )
            md.signed.version = self._next_version(role, current.signed.version + 1)
        md.signatures.clear()
        md.signed.expires = self.now() + self.expiry(role)
        self._stage(role, md)

    def _next_version(self, role: str, version: int) -> int:
        """``version``, or for a hash bin the next version of the whole bin family.

        All bins share one key set, and the daemon keeps one "last version" per key and
        role: two bins at the same version with different content would be a fork to it.
        So bin versions are drawn from one counter (the highest bin version + 1); each
        bin's own versions still only go up, and gaps are harmless to clients.
        """
        if role in TOP_LEVEL:
            return version
        try:
            succinct = self.find_delegation(role)[1]
        except RepositoryError:
            return version
        if succinct is None:
            return version
        if self._bin_top is None:
            found = (self.current(b) for b in succinct.get_roles())
            self._bin_top = max((md.signed.version for md in found if md is not None), default=0)
        self._bin_top = max(version, self._bin_top + 1)
        return self._bin_top

    def touch(self, role: str) -> None:
        """Stage a new version with unchanged content (new expiry, new signatures)."""
        with self.edit(role, force=True):
            pass

    def bump(self, roles: Sequence[str]) -> list[str]:
        """``touch`` roles before they expire; a hash-bin prefix means all its bins."""
        staged = []
        for role in roles:
            succinct = None if role in TOP_LEVEL else self.find_delegation(role)[1]
            names = (
                list(succinct.get_roles()) if succinct and role == succinct.name_prefix else [role]
            )
            for name in names:
                self.touch(name)
            staged += names
        return staged

    def _stage(self, role: str, md: Metadata[Any]) -> None:
        self.store.write_staged(role, md)
        self._staged.add(role)
        self._current[role] = md

    def _remember(self, keys: Sequence[KeyRef]) -> None:
        for ref in keys:
            self.config.key_uris[ref.key_id] = ref.uri
        self.store.save_config(self.config)

    # -- operations ----------------------------------------------------------------------

    def init(
        self,
        roles: dict[str, RoleSpec],
        expiry_seconds: dict[str, int] | None = None,
        server: str = "",
    ) -> PublishResult:
        """A new repository: root, targets, snapshot and timestamp v1, signed and published."""
        if self.store.exists():
            raise RepositoryError(f"{self.store.path} is already a repository")
        missing = [r for r in TOP_LEVEL if r not in roles or not roles[r].keys]
        if missing:
            raise RepositoryError(f"no keys for {', '.join(missing)}")
        self.config = RepoConfig(expiry_seconds=dict(expiry_seconds or {}), server=server)
        self._remember([k for spec in roles.values() for k in spec.keys])
        with self.edit("root", new=Root(consistent_snapshot=True)) as root:
            for name, spec in roles.items():
                for ref in spec.keys:
                    root.add_key(ref.key, name)
                root.roles[name].threshold = spec.threshold
            _check_thresholds(root.roles.items())
        with self.edit("targets", new=Targets()):
            pass
        return self.publish()

    def role_for_target(self, target_path: str) -> str:
        """Hash-bin delegation routes each target to its bin; otherwise top-level targets."""
        delegations = self._signed("targets").delegations
        if delegations is not None and delegations.succinct_roles is not None:
            return str(delegations.succinct_roles.get_role_for_target(target_path))
        return "targets"

    def _route(self, target_path: str, role: str | None) -> str:
        """The role to list a target in; an explicit hash bin must be the target's bin."""
        if role is None:
            return self.role_for_target(target_path)
        if role not in TOP_LEVEL:
            succinct = self.find_delegation(role)[1]
            if succinct is not None:
                right = succinct.get_role_for_target(target_path)
                if right != role:
                    raise RepositoryError(
                        f"{target_path!r} belongs in hash bin {right}, not {role}"
                    )
        return role

    def add_targets(
        self,
        files: Sequence[tuple[str, Path]],
        role: str | None = None,
        progress: Progress | None = None,
    ) -> dict[str, int]:
        """Hash files, copy them into ``targets/`` and list them; returns count per role."""
        by_role: dict[str, list[tuple[str, Path]]] = {}
        for target_path, local in files:
            check_target_path(target_path)
            name = self._route(target_path, role)
            by_role.setdefault(name, []).append((target_path, local))
        done = 0
        for name, items in by_role.items():
            with self.edit(name) as targets:
                _require_targets(name, targets)
                for target_path, local in items:
                    info = TargetFile.from_file(target_path, str(local), ["sha256"])
                    self.store.put_target(local, target_path, info.hashes["sha256"])
                    targets.targets[target_path] = info
                    done += 1
                    if progress:
                        progress(done, len(files))
        return {name: len(items) for name, items in by_role.items()}

    def remove_targets(
        self, target_paths: Sequence[str], role: str | None = None
    ) -> dict[str, int]:
        by_role: dict[str, list[str]] = {}
        for path in target_paths:
            by_role.setdefault(self._route(path, role), []).append(path)
        for name, paths in by_role.items():
            with self.edit(name) as targets:
                _require_targets(name, targets)
                for path in paths:
                    if path not in targets.targets:
                        raise RepositoryError(f"{path!r} is not a target of {name}")
                    del targets.targets[path]
        return {name: len(paths) for name, paths in by_role.items()}

    def delegate(
        self,
        name: str,
        keys: Sequence[KeyRef],
        threshold: int = 1,
        delegator: str = "targets",
        paths: list[str] | None = None,
        path_hash_prefixes: list[str] | None = None,
        terminating: bool = False,
    ) -> None:
        """Delegate ``paths`` or ``path_hash_prefixes`` from ``delegator`` to a new role."""
        check_role_name(name)
        if name in TOP_LEVEL:
            raise RepositoryError(f"{name} is a top-level role")
        if (paths is None) == (path_hash_prefixes is None):
            raise RepositoryError("give either paths or path hash prefixes")
        _check_keys(keys, threshold)
        with self.edit(delegator) as parent:
            _require_targets(delegator, parent)
            if parent.delegations is None:
                parent.delegations = Delegations(keys={}, roles={})
            if parent.delegations.succinct_roles is not None:
                raise RepositoryError(f"{delegator} delegates to hash bins; no other delegations")
            if name in parent.delegations.roles:
                raise RepositoryError(f"{delegator} already delegates to {name}")
            parent.delegations.roles[name] = DelegatedRole(
                name, [], threshold, terminating, paths, path_hash_prefixes
            )
            for ref in keys:
                parent.add_key(ref.key, name)
        self._remember(keys)
        with self.edit(name, new=Targets()):
            pass

    def delegate_hash_bins(
        self,
        prefix: str,
        count: int,
        keys: Sequence[KeyRef],
        threshold: int = 1,
        delegator: str = "targets",
    ) -> list[str]:
        """Succinct hash bins (TAP 15): ``count`` roles PREFIX-00.., one key set for all."""
        check_role_name(prefix)
        if count < 2 or count > 2**14 or count & (count - 1):
            raise RepositoryError("the number of hash bins must be a power of two, 2..16384")
        _check_keys(keys, threshold)
        with self.edit(delegator) as parent:
            _require_targets(delegator, parent)
            if parent.delegations is not None:
                raise RepositoryError(f"{delegator} already has delegations")
            succinct = SuccinctRoles([], threshold, count.bit_length() - 1, prefix)
            parent.delegations = Delegations(keys={}, succinct_roles=succinct)
            for ref in keys:
                parent.add_key(ref.key)
        self._remember(keys)
        bins = list(succinct.get_roles())
        for name in bins:
            with self.edit(name, new=Targets()):
                pass
        return bins

    def rotate(
        self,
        role: str,
        add: Sequence[KeyRef] = (),
        remove: Sequence[str] = (),
        threshold: int | None = None,
    ) -> list[str]:
        """Change a role's keys or threshold; returns the roles staged for re-signing.

        Top-level roles change in root (root N+1 needs the old and the new root
        thresholds); delegated roles (or a hash-bin prefix) change in their delegator.
        The role itself is staged at a new version so its new keys sign it.
        """
        if not add and not remove and threshold is None:
            raise RepositoryError("nothing to rotate: give keys to add or remove, or a threshold")
        if role in TOP_LEVEL:
            delegator, succinct = "root", None
        else:
            delegator, succinct = self.find_delegation(role)
        with self.edit(delegator) as parent:
            target_role = None if succinct is not None else role
            try:
                for ref in add:
                    parent.add_key(ref.key, target_role)
                for key_id in remove:
                    parent.revoke_key(key_id, target_role)
            except ValueError as exc:
                raise RepositoryError(str(exc)) from None
            if delegator == "root":
                roles: Any = parent.roles.items()
            elif succinct is not None:
                roles = [(succinct.name_prefix, parent.delegations.succinct_roles)]
            else:
                roles = parent.delegations.roles.items()
            for name, spec in roles:
                if name in (role, getattr(succinct, "name_prefix", None)) and threshold:
                    spec.threshold = threshold
            _check_thresholds(roles)
        self._remember(add)
        if role == "root":
            return ["root"]
        resign = list(succinct.get_roles()) if succinct is not None else [role]
        for name in resign:
            self.touch(name)
        return [delegator, *resign]

    # -- signing and publishing ----------------------------------------------------------

    def checks(self, role: str, md: Metadata[Any] | None = None) -> list[ThresholdCheck]:
        """The thresholds ``md`` (default: the current copy) must meet to be published."""
        md = md or self.current(role)
        if md is None:
            raise RepositoryError(f"no role {role!r} in this repository")
        payload = md.signed_bytes
        if role == "root":
            previous = self._previous_root(md.signed.version)
            result = md.signed.get_root_verification_result(
                previous.signed if previous else None, payload, md.signatures
            )
            checks = [_threshold(f"root v{md.signed.version} keys", result.second)]
            if previous is not None:
                checks.append(_threshold(f"root v{previous.signed.version} keys", result.first))
            return checks
        delegator = "root" if role in TOP_LEVEL else self.find_delegation(role)[0]
        return [
            _threshold(
                role, self._signed(delegator).get_verification_result(role, payload, md.signatures)
            )
        ]

    def _previous_root(self, version: int) -> Metadata[Any] | None:
        return self.store.read_published("root", version - 1) if version > 1 else None

    def sign(
        self, roles: Sequence[str] | None = None, key_ids: Sequence[str] | None = None
    ) -> dict[str, str]:
        """Add the missing signatures to staged roles (only from ``key_ids`` if given).

        All requests go out together (SignBatch). Returns errors by "role/key_id";
        signatures obtained are saved even if others failed.
        """
        requests: list[tuple[str, KeyRef]] = []
        errors: dict[str, str] = {}
        payloads: dict[str, bytes] = {}
        roles = list(roles) if roles is not None else self.staged_roles()
        matched: set[str] = set()
        for role in roles:
            if role not in self._staged:
                raise RepositoryError(f"{role} has no staged changes to sign")
            md = self.current(role)
            assert md is not None
            payloads[role] = md.signed_bytes
            unsigned: dict[str, Key] = {}
            for check in self.checks(role, md):
                for key_id in check.unsigned:
                    unsigned[key_id] = self._key(role, key_id)
            for key_id, key in unsigned.items():
                if key_ids is not None and key_id not in key_ids:
                    continue
                matched.add(key_id)
                uri = self.config.key_uris.get(key_id)
                if uri is None:
                    errors[f"{role}/{key_id}"] = "no private key URI for this key"
                    continue
                requests.append((role, KeyRef(key, uri)))
        for key_id in key_ids or ():
            if key_id not in matched:
                errors[f"{','.join(roles)}/{key_id}"] = "not a key that still has to sign"
        # ascending versions: a key shared by many roles (hash bins) never sees a step back
        requests.sort(key=lambda request: self._signed(request[0]).version)
        results = sign_all([(ref, payloads[role]) for role, ref in requests], self.stats)
        touched: set[str] = set()
        for (role, ref), result in zip(requests, results, strict=True):
            if isinstance(result, Signature):
                md = self.current(role)
                assert md is not None
                md.signatures[result.keyid] = result
                touched.add(role)
            else:
                errors[f"{role}/{ref.key_id}"] = str(result)
        for role in touched:
            md = self.current(role)
            assert md is not None
            self._stage(role, md)
        return errors

    def _key(self, role: str, key_id: str) -> Key:
        if role == "root":
            md = self.current("root")
            assert md is not None
            keys = dict(md.signed.keys)
            previous = self._previous_root(md.signed.version)
            if previous is not None:
                keys.update(previous.signed.keys)
            return keys[key_id]
        if role in TOP_LEVEL:
            return self._signed("root").keys[key_id]  # type: ignore[no-any-return]
        return self._signed(self.find_delegation(role)[0]).delegations.keys[key_id]  # type: ignore[no-any-return]

    def publish(
        self, roles: Sequence[str] | None = None, sign: bool = True, force: Sequence[str] = ()
    ) -> PublishResult:
        """Bump snapshot and timestamp over the staged roles, sign, check, write.

        ``roles``: which staged roles to publish (default all). ``sign=False`` signs only
        snapshot and timestamp (the online roles), for roles signed beforehand with
        ``sign``. ``force``: online roles to re-sign even if unchanged (``refresh``).
        Raises UnderSignedError (publishing nothing) if any threshold is not met.
        """
        include = [
            r for r in (roles if roles is not None else self.staged_roles()) if r not in ONLINE
        ]
        for role in include:
            if role not in self._staged:
                raise RepositoryError(f"{role} has no staged changes to publish")
            parent = "root" if role in TOP_LEVEL else self.find_delegation(role)[0]
            if role != "root" and parent in self._staged and parent not in include:
                raise RepositoryError(f"{role} depends on staged {parent}: publish both")
        published_snapshot = self.published("snapshot")
        with self.edit("snapshot", force="snapshot" in force, new=Snapshot()) as snapshot:
            meta = dict(published_snapshot.signed.meta) if published_snapshot else {}
            for role in include:
                if role != "root":
                    meta[f"{role}.json"] = MetaFile(version=self._signed(role).version)
            snapshot.meta = {name: MetaFile(version=m.version) for name, m in meta.items()}
        snapshot_version = self._signed("snapshot").version
        with self.edit("timestamp", force="timestamp" in force, new=Timestamp()) as timestamp:
            timestamp.snapshot_meta = MetaFile(version=snapshot_version)
        online = [r for r in ONLINE if r in self._staged]
        result = PublishResult(stats=self.stats)
        result.errors = self.sign(include + online if sign else online)
        missing = {}
        for role in include + online:
            bad = [c for c in self.checks(role) if not c.ok]
            if bad:
                missing[role] = ", ".join(
                    (f"{c.label} " if role == "root" else "")
                    + f"{len(c.signed)}/{c.threshold} signatures"
                    for c in bad
                )
        if missing:
            raise UnderSignedError(missing, result.errors)
        order = sorted(include, key=lambda r: r == "root") + online
        for role in order:
            md = self.current(role)
            assert md is not None
            self.store.write_published(role, md)
            self.store.clear_staged(role)
            self._staged.discard(role)
            result.published[role] = md.signed.version
        self._published.clear()
        self._current.clear()
        return result

    def refresh(self, margin: float = 0.5, force: bool = False) -> PublishResult | None:
        """Re-sign snapshot/timestamp if less than ``margin`` of their period is left.

        The cron job: publishes nothing else, even if other roles are staged.
        """
        due = []
        for role in ONLINE:
            md = self.published(role)
            if force or md is None or md.signed.expires - self.now() < self.expiry(role) * margin:
                due.append(role)
        if not due:
            return None
        return self.publish(roles=[], force=due)

    def status(self) -> list[RoleStatus]:
        out = []
        for role in self.all_roles():
            md = self.current(role)
            if md is None:
                continue
            published = self.published(role)
            out.append(
                RoleStatus(
                    role,
                    published.signed.version if published else None,
                    md.signed.version if role in self._staged else None,
                    md.signed.expires,
                    self.checks(role, md),
                )
            )
        return out


def _require_targets(name: str, signed: Any) -> None:
    if not isinstance(signed, Targets):
        raise RepositoryError(f"{name} is not a targets role")


def _check_keys(keys: Sequence[KeyRef], threshold: int) -> None:
    if not keys:
        raise RepositoryError("at least one key is needed")
    if threshold < 1 or threshold > len(keys):
        raise RepositoryError(f"threshold {threshold} with {len(keys)} key(s)")


def _check_thresholds(roles: Any) -> None:
    for name, role in roles:
        if role.threshold < 1 or len(role.keyids) < role.threshold:
            raise RepositoryError(
                f"{name}: threshold {role.threshold} with {len(role.keyids)} key(s)"
            )


def _threshold(label: str, result: VerificationResult) -> ThresholdCheck:
    return ThresholdCheck(label, result.threshold, sorted(result.signed), sorted(result.unsigned))
