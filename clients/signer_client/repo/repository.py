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
import hashlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
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
MIN_EXPIRY = 60  # seconds: less and metadata may expire before a client has fetched it
MAX_EXPIRY = 100 * 365 * DAY  # beyond this is a typo, and soon beyond datetime's range
HASH_ALGORITHMS = ("sha256", "sha512")

Progress = Callable[[int, int], None]


def check_expiry(role: str, seconds: int) -> int:
    """An expiry period that yields usable metadata: a minute to a hundred years."""
    if seconds < MIN_EXPIRY:
        raise RepositoryError(
            f"expiry for {role}: {seconds}s would publish metadata that expires before "
            f"clients fetch it (at least {MIN_EXPIRY}s)"
        )
    if seconds > MAX_EXPIRY:
        raise RepositoryError(
            f"expiry for {role}: {seconds // DAY} days is more than {MAX_EXPIRY // DAY} days"
        )
    return seconds


def check_hashes(names: Sequence[str], what: str) -> list[str]:
    """Hash algorithms ngclient and python-tuf both compute; no duplicates."""
    bad = [n for n in names if n not in HASH_ALGORITHMS]
    if bad or len(set(names)) != len(names):
        raise RepositoryError(
            f"{what}: {', '.join(bad) or 'duplicate algorithm'}: use "
            f"{' and/or '.join(HASH_ALGORITHMS)}"
        )
    return list(names)


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
        self._dry = False  # inside dry_run(): nothing is written

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
        """The role's period: its own, a hash bin's prefix's, else targets' (or default)."""
        seconds = self.config.expiry_seconds
        default = "targets" if role not in TOP_LEVEL else role
        if role not in seconds and role not in TOP_LEVEL and seconds:
            try:
                succinct = self.find_delegation(role)[1]
            except RepositoryError:
                succinct = None
            if succinct is not None and succinct.name_prefix in seconds:
                role = succinct.name_prefix
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
        floors = self.config.version_floor
        if role != "root":  # root versions are consecutive: abort never leaves a gap there
            version = max(version, floors.get(role, 0) + 1)
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
            top = max((md.signed.version for md in found if md is not None), default=0)
            self._bin_top = max([top, *(floors.get(b, 0) for b in succinct.get_roles())])
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
        if not self._dry:
            self.store.write_staged(role, md)
        self._staged.add(role)
        self._current[role] = md

    def _remember(self, keys: Sequence[KeyRef]) -> None:
        for ref in keys:
            self.config.key_uris[ref.key_id] = ref.uri
        if not self._dry:
            self.store.save_config(self.config)

    @contextmanager
    def dry_run(self) -> Iterator[None]:
        """Edits inside change nothing on disk and are forgotten after.

        For refusing bad input before anything irreversible happens (a key created in
        the daemon): run the edit with placeholder keys first (``placeholder_keys``).
        """
        saved = (
            copy.deepcopy(self.config),
            set(self._staged),
            dict(self._current),
            dict(self._published),
            self._bin_top,
        )
        self._dry = True
        try:
            yield
        finally:
            self._dry = False
            self.config, self._staged, self._current, self._published, self._bin_top = saved

    # -- operations ----------------------------------------------------------------------

    def init(
        self,
        roles: dict[str, RoleSpec],
        expiry_seconds: dict[str, int] | None = None,
        server: str = "",
        settings: dict[str, Any] | None = None,
    ) -> PublishResult:
        """A new repository: root, targets, snapshot and timestamp v1, signed and published.

        All or nothing: input is checked first (``check_init``), and if signing or
        publishing fails, every file written is removed again, so the directory can be
        initialised afresh; except when the only signatures missing are offline keys'
        (a root ceremony), which leaves v1 staged. ``settings``: further RepoConfig
        fields (meta_length, ...).
        """
        self.check_init(roles, expiry_seconds)
        self.config = RepoConfig(expiry_seconds=dict(expiry_seconds or {}), server=server)
        for name, value in (settings or {}).items():
            setattr(self.config, name, value)
        try:
            self._remember([k for spec in roles.values() for k in spec.keys])
            with self.edit("root", new=Root(consistent_snapshot=True)) as root:
                for name, spec in roles.items():
                    for ref in spec.keys:
                        root.add_key(ref.key, name)
                    root.roles[name].threshold = spec.threshold
            with self.edit("targets", new=Targets()):
                pass
            return self.publish()
        except UnderSignedError as exc:
            if self._waits_for_offline_keys(exc):
                raise  # a root ceremony: v1 stays staged for `sign --export/--import`
            self._undo_init()
            raise
        except BaseException:
            self._undo_init()
            raise

    def _waits_for_offline_keys(self, exc: UnderSignedError) -> bool:
        """Every signature missing is one only an offline key can make (nothing failed)."""
        uris = [self.config.key_uris.get(where.rpartition("/")[2], "") for where in exc.errors]
        return bool(uris) and all(uri.startswith("offline:") for uri in uris)

    def _undo_init(self) -> None:
        self.store.remove_all()
        self._staged.clear()
        self._current.clear()
        self._published.clear()

    def check_init(
        self, roles: dict[str, RoleSpec], expiry_seconds: dict[str, int] | None = None
    ) -> None:
        """Everything ``init`` would refuse, refused before a key is made or a file written.

        Placeholder keys (``placeholder_keys``) stand in for keys still to be created.
        """
        if self.store.exists():
            raise RepositoryError(f"{self.store.path} is already a repository")
        for d in (self.store.metadata_dir, self.store.targets_dir, self.store.staging_dir):
            if d.exists() and any(d.iterdir()):
                raise RepositoryError(
                    f"{d} is not empty: init only into an empty directory (`adopt` takes over "
                    "an existing repository)"
                )
        unknown = sorted(set(roles) - set(TOP_LEVEL))
        if unknown:
            raise RepositoryError(f"{', '.join(unknown)}: not a top-level role")
        missing = [r for r in TOP_LEVEL if r not in roles or not roles[r].keys]
        if missing:
            raise RepositoryError(f"no keys for {', '.join(missing)}")
        for name, spec in roles.items():
            _check_keys(spec.keys, spec.threshold, name)
        for name, seconds in (expiry_seconds or {}).items():
            if name not in TOP_LEVEL:
                raise RepositoryError(
                    f"expiry for {name}: not a top-level role (delegated roles take targets' "
                    "period; `expiry set ROLE` once they exist)"
                )
            check_expiry(name, seconds)

    def role_for_target(self, target_path: str) -> str:
        """Hash-bin delegation routes each target to its bin; otherwise top-level targets."""
        delegations = self._signed("targets").delegations
        if delegations is not None and delegations.succinct_roles is not None:
            return str(delegations.succinct_roles.get_role_for_target(target_path))
        return "targets"

    def _route(self, target_path: str, role: str | None, adding: bool = True) -> str:
        """The role to list a target in: one where clients will look for it.

        An explicit hash bin must be the target's bin; any other delegated role must be
        reached by ngclient's search for that path (its ``paths`` or hash prefixes, and
        those of every role above it, match; no terminating delegation cuts it off), and
        no role searched before it may list the path already (clients would take that).
        """
        if role is None:
            return self.role_for_target(target_path)
        if role in TOP_LEVEL:
            if role != "targets":
                raise RepositoryError(f"{role} is not a targets role")
            return role
        succinct = self.find_delegation(role)[1]
        if succinct is not None:
            right = succinct.get_role_for_target(target_path)
            if right != role:
                raise RepositoryError(f"{target_path!r} belongs in hash bin {right}, not {role}")
            return role
        if not adding:
            return role
        searched = self.search_order(target_path)
        if role not in searched:
            raise RepositoryError(
                f"{target_path!r} is outside the delegation to {role} "
                f"({self._delegation_scope(role)}): no client would look for it there"
            )
        for earlier in searched[: searched.index(role)]:
            md = self.current(earlier)
            if md is not None and target_path in md.signed.targets:
                raise RepositoryError(
                    f"{target_path!r} is listed in {earlier}, which clients search before {role}"
                )
        return role

    def search_order(self, target_path: str) -> list[str]:
        """The roles ngclient visits looking for ``target_path``, in its order.

        Pre-order depth first from targets, children in delegation order, a matching
        terminating delegation ending the search below its delegator, at most 32 roles
        (``max_delegations``): the walk of ``Updater._preorder_depth_first_walk``.
        """
        order: list[str] = []
        to_visit = [("targets", "root")]
        visited: set[tuple[str, str]] = set()
        while to_visit and len(order) < 32:
            name, parent = to_visit.pop()
            if (name, parent) in visited:
                continue
            md = self.current(name)
            if md is None:
                continue
            order.append(name)
            visited.add((name, parent))
            delegations = md.signed.delegations
            if delegations is None:
                continue
            children = []
            for child, terminating in delegations.get_roles_for_target(target_path):
                children.append((child, name))
                if terminating:
                    to_visit = []
                    break
            to_visit.extend(reversed(children))
        return order

    def _delegation_scope(self, role: str) -> str:
        delegator = self.find_delegation(role)[0]
        spec = self._signed(delegator).delegations.roles[role]
        if spec.paths is not None:
            return f"paths {', '.join(spec.paths)}"
        return f"path hash prefixes {', '.join(spec.path_hash_prefixes)}"

    def add_targets(
        self,
        files: Sequence[tuple[str, Path]],
        role: str | None = None,
        progress: Progress | None = None,
        hashes: Sequence[str] | None = None,
        custom: dict[str, Any] | None = None,
    ) -> dict[str, int]:
        """Hash files, copy them into ``targets/`` and list them; returns count per role.

        ``hashes``: algorithms listed (default: the repository's ``target_hashes``); the
        file is served under each hash (``DIR/HASH.NAME``), as ngclient takes the first.
        ``custom``: the TargetFile ``custom`` object of every file added. All paths and
        roles are checked before any file is copied or any role edited.
        """
        algorithms = check_hashes(
            list(hashes) if hashes else self.config.target_hashes, "target hashes"
        )
        if custom is not None and not isinstance(custom, dict):
            raise RepositoryError("custom target metadata must be a JSON object")
        by_role: dict[str, list[tuple[str, Path]]] = {}
        for target_path, local in files:
            check_target_path(target_path)
            name = self._route(target_path, role)
            by_role.setdefault(name, []).append((target_path, local))
        for name in by_role:
            _require_targets(name, self._signed(name))
        done = 0
        for name, items in by_role.items():
            with self.edit(name) as targets:
                for target_path, local in items:
                    info = TargetFile.from_file(target_path, str(local), algorithms)
                    first, *others = algorithms
                    self.store.put_target(local, target_path, info.hashes[first])
                    for other in others:
                        self.store.link_target(target_path, info.hashes[first], info.hashes[other])
                    if custom is not None:
                        info.unrecognized_fields["custom"] = copy.deepcopy(custom)
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
            by_role.setdefault(self._route(path, role, adding=False), []).append(path)
        for name, paths in by_role.items():  # all checked before any role is edited
            signed = self._signed(name)
            _require_targets(name, signed)
            for path in paths:
                if path not in signed.targets:
                    raise RepositoryError(f"{path!r} is not a target of {name}")
        for name, paths in by_role.items():
            with self.edit(name) as targets:
                for path in paths:
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

    def undelegate(self, role: str) -> list[str]:
        """Stop delegating to ``role`` (a hash-bin prefix: all its bins); returns the roles
        no longer delegated (with those only reachable through it).

        The delegator is staged without the delegation (and without keys nothing else
        uses); the next ``publish`` drops the roles from snapshot. Their published files
        stay for clients mid-update until ``prune``.
        """
        if role in TOP_LEVEL:
            raise RepositoryError(f"{role} is a top-level role and cannot be undelegated")
        delegator, succinct = self.find_delegation(role)
        if succinct is not None and role != succinct.name_prefix:
            raise RepositoryError(
                f"{role} is one of the hash bins {succinct.name_prefix}-*: bins go together "
                f"(undelegate {succinct.name_prefix})"
            )
        before = self.all_roles()
        with self.edit(delegator) as parent:
            delegations = parent.delegations
            if succinct is not None:
                parent.delegations = None
            else:
                spec = delegations.roles.pop(role)
                used = {k for other in delegations.roles.values() for k in other.keyids}
                for key_id in spec.keyids:
                    if key_id not in used:
                        delegations.keys.pop(key_id, None)
                if not delegations.roles:
                    parent.delegations = None
        after = set(self.all_roles())
        gone = [r for r in before if r not in after]
        for name in gone:
            self._unstage(name)
        return gone

    def _unstage(self, role: str) -> None:
        if role in self._staged and not self._dry:
            self.store.clear_staged(role)
        self._staged.discard(role)
        self._current.pop(role, None)

    def abort(self, roles: Sequence[str] | None = None, force: bool = False) -> list[str]:
        """Discard staged changes: all, or ``roles`` (and staged roles only they delegate).

        Versions staged are never reused for other content (``RepoConfig.version_floor``):
        a daemon key that signed one refuses different bytes at that version. Root cannot
        skip versions, so a staged root that carries signatures is kept unless ``force``
        (its signers must then never sign root again, e.g. keys being rotated out).
        Returns the roles discarded.
        """
        chosen = self.staged_roles() if roles is None else list(dict.fromkeys(roles))
        if not chosen:
            raise RepositoryError("nothing is staged")
        for role in chosen:
            if role not in self._staged:
                raise RepositoryError(f"{role} has no staged changes")
        root = self.current("root") if "root" in chosen else None
        if root is not None and root.signatures and not force:
            signers = ", ".join(k[:8] for k in sorted(root.signatures))
            raise RepositoryError(
                f"root v{root.signed.version} is signed by {signers}: root versions are "
                f"consecutive, so the next root is v{root.signed.version} again, and a daemon "
                "key refuses to sign other bytes at a version it signed; publish it, or "
                "abort --force if those keys will not sign root again"
            )
        versions = {}
        for role in chosen:
            md = self.current(role)
            assert md is not None
            versions[role] = md.signed.version
            self._unstage(role)
        self._published.clear()
        self._current.clear()
        orphans = True
        while orphans:  # staged roles whose delegation went with the discarded ones
            orphans = False
            for role in self.staged_roles():
                if role in TOP_LEVEL:
                    continue
                try:
                    self.find_delegation(role)
                except RepositoryError:
                    md = self.current(role)
                    versions[role] = md.signed.version if md is not None else 0
                    self._unstage(role)
                    orphans = True
        floors = self.config.version_floor
        for role, version in versions.items():
            if role != "root" and version > floors.get(role, 0):
                floors[role] = version
        self._remember([])
        self._bin_top = None
        return sorted(versions)

    def set_expiry(self, role: str, seconds: int) -> list[str]:
        """A new expiry period for ``role`` (a hash-bin prefix: all bins); staged at once.

        Snapshot and timestamp are not staged: the next ``publish`` or ``refresh`` uses
        the new period. The period of targets is also the default of delegated roles.
        """
        if role not in TOP_LEVEL:
            self.find_delegation(role)  # refuses roles that do not exist
        check_expiry(role, seconds)
        self.config.expiry_seconds[role] = seconds
        self._remember([])
        return [] if role in ONLINE else self.bump([role])

    def prune(self, keep: int, dry_run: bool = False) -> PruneResult:
        """Remove metadata and target files no client can still need; returns what went.

        Kept: every N.root.json (clients walk the root chain), the ``keep`` newest
        snapshots (and the one timestamp names) with every version they list, and every
        target file those versions, or staged roles, list (under each of its hashes).
        """
        if keep < 1:
            raise RepositoryError(f"--keep {keep}: keep at least the current snapshot (1)")
        files = self.store.versioned_files()
        snapshots = sorted(v for role, v, _ in files if role == "snapshot")
        timestamp = self.published("timestamp")
        kept = set(snapshots[-keep:])
        if timestamp is not None:
            kept.add(timestamp.signed.snapshot_meta.version)
        wanted: set[tuple[str, int]] = set()
        for version in kept:
            wanted.add(("snapshot", version))
            snapshot = self.store.read_published("snapshot", version)
            for name, meta in snapshot.signed.meta.items() if snapshot else ():
                wanted.add((name[: -len(".json")], meta.version))
        old = [p for role, v, p in files if role != "root" and (role, v) not in wanted]
        listing: list[Any] = []
        for role, version in wanted:
            if role != "snapshot":
                md = self.store.read_published(role, version)
                if md is not None:
                    listing.append(md.signed)
        listing += [self._signed(r) for r in self._staged if r not in ("root", *ONLINE)]
        needed = {
            self.store.target_file_path(path, digest)
            for signed in listing
            for path, info in signed.targets.items()
            for digest in info.hashes.values()
        }
        unlisted = [p for p in self.store.target_files() if p not in needed]
        result = PruneResult(old, unlisted, sum(p.stat().st_size for p in old + unlisted))
        if not dry_run:
            for path in old + unlisted:
                path.unlink()
            self.store.remove_empty_dirs()
        return result

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
        self,
        roles: Sequence[str] | None = None,
        key_ids: Sequence[str] | None = None,
        progress: Progress | None = None,
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
        results = sign_all([(ref, payloads[role]) for role, ref in requests], self.stats, progress)
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
        self,
        roles: Sequence[str] | None = None,
        sign: bool = True,
        force: Sequence[str] = (),
        progress: Callable[[str, int, int], None] | None = None,
    ) -> PublishResult:
        """Bump snapshot and timestamp over the staged roles, sign, check, write.

        ``roles``: which staged roles to publish (default all). ``sign=False`` signs only
        snapshot and timestamp (the online roles), for roles signed beforehand with
        ``sign``. ``force``: online roles to re-sign even if unchanged (``refresh``).
        ``progress`` hears ("signing" or "writing", done, total).
        Raises UnderSignedError (publishing nothing) if any threshold is not met.

        Snapshot lists every role still delegated (an ``undelegate``d role drops out).
        With meta lengths or hashes on (``RepoConfig.meta_length``/``meta_hashes``) the
        listed files' final bytes, signatures included, must exist before snapshot is
        made: three signing rounds (roles, snapshot, timestamp) instead of one.
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
        hashed = bool(self.config.meta_length or self.config.meta_hashes)
        signing = None if progress is None else lambda n, t: progress("signing", n, t)
        result = PublishResult(stats=self.stats)
        if hashed and sign and include:
            result.errors = self.sign(include, progress=signing)
            self._raise_under_signed(include, result.errors)
        live = self._live_roles(include)
        published_snapshot = self.published("snapshot")
        with self.edit("snapshot", force="snapshot" in force, new=Snapshot()) as snapshot:
            meta = dict(published_snapshot.signed.meta) if published_snapshot else {}
            for role in include:
                if role != "root":
                    meta[f"{role}.json"] = MetaFile(version=self._signed(role).version)
            snapshot.meta = {
                name: self._meta_file(name[: -len(".json")], m.version, name[:-5] in include, m)
                for name, m in meta.items()
                if name[: -len(".json")] in live
            }
        if hashed and "snapshot" in self._staged:
            result.errors |= self.sign(["snapshot"], progress=signing)
        with self.edit("timestamp", force="timestamp" in force, new=Timestamp()) as timestamp:
            timestamp.snapshot_meta = self._meta_file(
                "snapshot", self._signed("snapshot").version, "snapshot" in self._staged
            )
        online = [r for r in ONLINE if r in self._staged]
        if hashed:
            result.errors |= self.sign([r for r in online if r == "timestamp"], progress=signing)
        else:
            result.errors = self.sign(include + online if sign else online, progress=signing)
        self._raise_under_signed(include + online, result.errors)
        order = sorted(include, key=lambda r: r == "root") + online
        for done, role in enumerate(order, 1):
            md = self.current(role)
            assert md is not None
            self.store.write_published(role, md)
            self.store.clear_staged(role)
            self._staged.discard(role)
            result.published[role] = md.signed.version
            if progress is not None:
                progress("writing", done, len(order))
        self._published.clear()
        self._current.clear()
        return result

    def _raise_under_signed(self, roles: Sequence[str], errors: dict[str, str]) -> None:
        missing = {}
        for role in roles:
            bad = [c for c in self.checks(role) if not c.ok]
            if bad:
                missing[role] = ", ".join(
                    (f"{c.label} " if role == "root" else "")
                    + f"{len(c.signed)}/{c.threshold} signatures"
                    for c in bad
                )
        if missing:
            raise UnderSignedError(missing, errors)

    def _meta_file(
        self, role: str, version: int, staged: bool, listed: MetaFile | None = None
    ) -> MetaFile:
        """Snapshot's (or timestamp's) entry for ``role``: version, and length and hashes
        of the file as published if the repository asks for them (``listed``: the entry
        already published for it, kept if it says what is asked)."""
        config = self.config
        if not (config.meta_length or config.meta_hashes):
            return MetaFile(version=version)
        if (
            not staged
            and listed is not None
            and (listed.length is not None) == config.meta_length
            and sorted(listed.hashes or {}) == sorted(config.meta_hashes)
        ):
            return listed
        md = self.current(role) if staged else self.store.read_published(role, version)
        if md is None:
            raise RepositoryError(f"{role} v{version} is listed but not published")
        data = self.store.serialize(md)
        return MetaFile(
            version=version,
            length=len(data) if config.meta_length else None,
            hashes={h: hashlib.new(h, data).hexdigest() for h in config.meta_hashes} or None,
        )

    def _live_roles(self, include: Sequence[str]) -> set[str]:
        """The targets roles delegated once ``include`` is published (others as published)."""

        def signed(name: str) -> Any:
            md = self.current(name) if name in include else self.published(name)
            return md.signed if md is not None else None

        live, queue = {"targets"}, ["targets"]
        while queue:
            md = signed(queue.pop())
            delegations = md.delegations if md is not None else None
            if delegations is None:
                continue
            if delegations.succinct_roles is not None:
                live.update(delegations.succinct_roles.get_roles())
            for name in delegations.roles or {}:
                if name not in live:
                    live.add(name)
                    queue.append(name)
        return live

    def refresh(self, margin: float = 0.5, force: bool = False) -> PublishResult | None:
        """Re-sign snapshot/timestamp if less than ``margin`` of their period is left.

        The cron job: publishes nothing else, even if other roles are staged.
        """
        if not 0 < margin <= 1:
            raise RepositoryError(
                f"margin {margin:g}: want a fraction of the expiry period, above 0 and at most 1"
            )
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


@dataclass(frozen=True)
class PruneResult:
    metadata: list[Path]  # old N.ROLE.json files
    targets: list[Path]  # target files no kept metadata lists
    size: int  # bytes, both together


def _require_targets(name: str, signed: Any) -> None:
    if not isinstance(signed, Targets):
        raise RepositoryError(f"{name} is not a targets role")


def _check_keys(keys: Sequence[KeyRef], threshold: int, role: str = "") -> None:
    where = f"{role}: " if role else ""
    if not keys:
        raise RepositoryError(f"{where}at least one key is needed")
    if threshold < 1 or threshold > len({ref.key_id for ref in keys}):
        raise RepositoryError(f"{where}threshold {threshold} with {len(keys)} key(s)")


def placeholder_keys(count: int) -> list[KeyRef]:
    """Stand-ins for keys not created yet, so a dry run can check the whole command."""
    from securesystemslib.signer import CryptoSigner

    return [
        KeyRef(CryptoSigner.generate_ed25519().public_key, "placeholder:") for _ in range(count)
    ]


def _check_thresholds(roles: Any) -> None:
    for name, role in roles:
        if role.threshold < 1 or len(role.keyids) < role.threshold:
            raise RepositoryError(
                f"{name}: threshold {role.threshold} with {len(role.keyids)} key(s)"
            )


def _threshold(label: str, result: VerificationResult) -> ThresholdCheck:
    return ThresholdCheck(label, result.threshold, sorted(result.signed), sorted(result.unsigned))
