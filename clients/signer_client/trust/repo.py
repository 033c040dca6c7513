"""A notary (Docker Content Trust) repository whose root, targets and signer keys live in signerd.

The verbs of ``docker trust`` and the notary CLI, as operations on one GUN:
``init``, ``add_signer``, ``remove_signer``, ``sign``, ``revoke``, ``inspect``,
``rotate`` and ``delete``. Each one

1. fetches the repository from notary-server and verifies it (``load``): the root
   against the one this client trusted before (TOFU, then rotations must be signed by
   the old root), every other role against the root and its delegations;
2. checks its whole input, and only then creates keys or changes metadata;
3. signs every changed role with the daemon (never a local key) and publishes all
   changed files in one POST, so notary-server takes all of it or none.

Keys created by a failed operation are retired again; nothing is half-published.
"""

from __future__ import annotations

import datetime as dt
import posixpath
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from signer_api.v1 import signer_pb2 as pb
from signer_client.errors import PermissionDeniedError
from signer_client.trust.keys import DaemonKey, DaemonKeys, PendingApprovalError
from signer_client.trust.legacy import LegacyRootKey
from signer_client.trust.metadata import (
    DelegatedRole,
    Envelope,
    FileMeta,
    MetadataError,
    PublicKey,
    RoleKeys,
    Root,
    Snapshot,
    Targets,
    Timestamp,
    VerificationError,
)
from signer_client.trust.notary_server import NotaryServerClient, RepositoryNotFoundError
from signer_client.trust.state import PendingCeremony, TrustDir
from signer_client.trust.verify import TrustPinning, verify_repository

ROOT, TARGETS, SNAPSHOT, TIMESTAMP = "root", "targets", "snapshot", "timestamp"
RELEASES = "targets/releases"
_VERSION_ATTEMPTS = 5
REPO_ADMIN = "Repo Admin"  # docker's name for tags signed straight into targets
DAY = dt.timedelta(days=1)
# notary's default expiries (client/client.go): root 10 years, the rest 3 years
DEFAULT_EXPIRY = {
    ROOT: 3650 * DAY,
    TARGETS: 1095 * DAY,
    SNAPSHOT: 1095 * DAY,
    "delegation": 1095 * DAY,
}


class TrustError(Exception):
    """An operation cannot be done as asked; nothing was published."""


@dataclass(frozen=True)
class TrustSettings:
    """How long new metadata stays valid, per role (``"delegation"`` for targets/*)."""

    expiry: dict[str, dt.timedelta] = field(default_factory=lambda: dict(DEFAULT_EXPIRY))

    def expires(self, role: str, now: dt.datetime) -> dt.datetime:
        """Whole hours: a publish retried within the hour rebuilds the very bytes the
        daemon already signed (and recorded as that version), so it signs them again."""
        kind = "delegation" if role.startswith("targets/") else role
        when = now + self.expiry.get(kind, DEFAULT_EXPIRY["delegation"])
        return when.replace(minute=0, second=0, microsecond=0)


@dataclass(frozen=True)
class SignedTag:
    tag: str
    digest: str  # hex sha256 of the manifest
    length: int
    signers: tuple[str, ...]


@dataclass(frozen=True)
class TagToSign:
    tag: str
    digest: bytes  # sha256 of the manifest
    length: int  # manifest size in bytes


@dataclass
class Collection:
    """One GUN's verified metadata, and what this operation changed in it."""

    gun: str
    root: Root
    targets: Targets
    snapshot: Snapshot
    timestamp: Timestamp
    delegations: dict[str, Targets]
    local_snapshot: bool = False  # the snapshot key is in the daemon, not notary-server
    changed: set[str] = field(default_factory=set)

    def role_keys(self, role: str) -> tuple[list[PublicKey], int]:
        """The keys and threshold that sign ``role`` (a direct child of targets if delegated)."""
        if role in self.root.roles:
            spec = self.root.roles[role]
            return list(self.root.role_keys(role).values()), spec.threshold
        delegated = self.delegation(role)
        if delegated is None:
            raise TrustError(f"{self.gun} has no role {role}")
        keys = self.targets.delegations.keys
        return [keys[k] for k in delegated.keyids if k in keys], delegated.threshold

    def delegation(self, role: str) -> DelegatedRole | None:
        return self.targets.delegations.role(role)

    def metadata(self, role: str) -> Targets:
        if role == TARGETS:
            return self.targets
        return self.delegations.setdefault(role, Targets(version=0))


@dataclass(frozen=True)
class Outcome:
    """What an operation did, for the CLI to print."""

    lines: tuple[str, ...] = ()
    pending: PendingApprovalError | None = None


class TrustRepository:
    """The operations on one GUN. IO (notary-server, the daemon, the trust dir) is passed in."""

    def __init__(
        self,
        gun: str,
        server: NotaryServerClient,
        keys: DaemonKeys,
        trust: TrustDir,
        settings: TrustSettings | None = None,
        pinning: TrustPinning | None = None,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self.gun = gun
        self.pinning = pinning
        self.server = server
        self.keys = keys
        self.trust = trust
        self.settings = settings or TrustSettings()
        self._now = clock or (lambda: dt.datetime.now(dt.UTC))

    # -- reading -----------------------------------------------------------------------

    def exists(self) -> bool:
        try:
            self.server.get(self.gun, ROOT)
        except RepositoryNotFoundError:
            return False
        return True

    def load(self, strict: bool = True) -> Collection:
        """Fetch and verify the whole repository (TrustError if it does not verify).

        ``strict``: a delegated role that does not verify is an error (what a writer
        needs); with ``strict=False`` it is left out, as notary's reader does.
        """
        trusted_bytes = self.trust.trusted_root(self.gun)
        try:
            trusted = (
                Root.from_envelope(Envelope.from_bytes(trusted_bytes)) if trusted_bytes else None
            )
        except MetadataError as exc:
            raise TrustError(f"the trusted root of {self.gun} in the trust dir: {exc}") from None
        try:
            verified = verify_repository(
                self.gun,
                lambda name: self.server.get(self.gun, name),
                trusted_root=trusted,
                pinning=self.pinning,
                now=self._now(),
                strict=strict,
            )
        except RepositoryNotFoundError:
            raise TrustError(
                f"{self.gun} is not a trusted repository on {self.server.url} "
                f"(run `signer-trust init {self.gun}`)"
            ) from None
        except (VerificationError, MetadataError) as exc:
            raise TrustError(f"{self.gun} does not verify: {exc}") from None
        collection = Collection(
            self.gun,
            verified.root,
            verified.targets,
            verified.snapshot,
            verified.timestamp,
            dict(verified.delegations),
        )
        collection.local_snapshot = bool(self.keys.holding(collection.role_keys(SNAPSHOT)[0]))
        self.trust.save_root(self.gun, verified.raw[ROOT])
        return collection

    def signed_tags(self, collection: Collection) -> list[SignedTag]:
        """Released tags (in targets or targets/releases) and who signed each, as docker."""
        released: dict[tuple[str, str], FileMeta] = {}
        for role in (TARGETS, RELEASES):
            meta = collection.targets if role == TARGETS else collection.delegations.get(role)
            for name, target in (meta.targets if meta else {}).items():
                released[(name, target.hashes["sha256"].hex())] = target
        signers: dict[tuple[str, str], list[str]] = {k: [] for k in released}
        for role, meta in sorted(collection.delegations.items()):
            if role == RELEASES:
                continue
            for name, target in meta.targets.items():
                key = (name, target.hashes["sha256"].hex())
                if key in signers:
                    signers[key].append(role.removeprefix("targets/"))
        return [
            SignedTag(
                name,
                digest,
                released[(name, digest)].length,
                tuple(signers[(name, digest)]) or (REPO_ADMIN,),
            )
            for (name, digest) in sorted(released)
        ]

    # -- init ----------------------------------------------------------------------------

    def init(
        self, local_snapshot: bool = False, root_key_id: str = "", quorum: bool = False
    ) -> Outcome:
        if self.trust.pending(self.gun) is not None:
            raise TrustError(
                f"a root ceremony for {self.gun} is pending: `signer-trust ceremony finish "
                f"{self.gun}` (or `ceremony abort`)"
            )
        if self.exists():
            raise TrustError(f"{self.gun} is already initialised on {self.server.url}")
        root_record = None
        if root_key_id:
            root_record = self.keys.get(root_key_id)
            if root_record.role != ROOT or root_record.repository != self.gun:
                raise TrustError(
                    f"key {root_key_id} is bound to role {root_record.role!r} of "
                    f"{root_record.repository or 'no repository'!r}, not root of {self.gun}"
                )
        # Server-held keys first: a notary-server that refuses this GUN stops us before any
        # key is made in the token.
        timestamp_key = self.server.get_key(self.gun, TIMESTAMP)
        snapshot_key = None if local_snapshot else self.server.get_key(self.gun, SNAPSHOT)
        created: list[DaemonKey] = []
        try:
            if root_record is not None:
                root_key = self.keys.certify(root_record)
            else:
                root_key = self.keys.create(ROOT, f"{self.gun} root", quorum=quorum)
                created.append(root_key)
            targets_key = self.keys.create(TARGETS, f"{self.gun} targets")
            created.append(targets_key)
            if snapshot_key is None:
                local = self.keys.create(SNAPSHOT, f"{self.gun} snapshot")
                created.append(local)
                snapshot_key = local.notary
            now = self._now()
            root = Root(
                keys={
                    k.key_id: k
                    for k in (root_key.notary, targets_key.notary, snapshot_key, timestamp_key)
                },
                roles={
                    ROOT: RoleKeys([root_key.notary_id], 1),
                    TARGETS: RoleKeys([targets_key.notary_id], 1),
                    SNAPSHOT: RoleKeys([snapshot_key.key_id], 1),
                    TIMESTAMP: RoleKeys([timestamp_key.key_id], 1),
                },
                version=1,
                expires=self.settings.expires(ROOT, now),
                consistent=False,
            )
            targets = Targets(version=1, expires=self.settings.expires(TARGETS, now))
            targets_env = self._sign(targets.envelope(), [targets_key], TARGETS)
            pending = self._sign_root_and_publish(
                "init",
                root.envelope(),
                [root_key],
                {TARGETS: targets_env.to_bytes()},
                None,
                local_snapshot,
                created=created,
            )
        except BaseException:
            self.keys.retire_quietly([k.key_id for k in created])
            raise
        if pending is not None:
            return pending
        holder = "the daemon" if local_snapshot else "notary-server"
        return Outcome(
            (
                f"initialised {self.gun}: root key {root_key.notary_id} (daemon key "
                f"{root_key.key_id}), targets key {targets_key.notary_id}",
                f"snapshot key held by {holder}; timestamp key held by notary-server",
            ),
        )

    def _sign_root_and_publish(
        self,
        operation: str,
        root_env: Envelope,
        signers: Sequence[DaemonKey],
        files: dict[str, bytes],
        collection: Collection | None,
        local_snapshot: bool,
        created: Sequence[DaemonKey] = (),
        retire_after: Sequence[DaemonKey] = (),
    ) -> Outcome | None:
        """Sign root with every key in ``signers``, then publish everything at once.

        A quorum key cannot sign yet: its request is opened for exactly these bytes and
        the whole publish is parked in the trust dir (returned Outcome says what waits);
        ``finish_ceremony`` completes it. None when it was published.
        """
        payload = root_env.payload()
        requests: dict[str, str] = {}
        pending: PendingApprovalError | None = None
        for key in signers:
            try:
                root_env.add_signature(key.notary_id, self.keys.sign(key, payload, ROOT))
            except PendingApprovalError as wait:
                requests[key.key_id] = wait.request.request_id
                pending = wait
        files = {ROOT: root_env.to_bytes(), **files}
        if pending is not None:
            self.trust.save_pending(
                self.gun,
                PendingCeremony(
                    operation=operation,
                    files=files,
                    requests=requests,
                    notary_ids={k.key_id: k.notary_id for k in signers},
                    retire_after=[k.key_id for k in retire_after],
                    created=[k.key_id for k in created],
                    local_snapshot=local_snapshot,
                ),
            )
            return Outcome(_pending_lines(self.gun, operation, requests), pending)
        self._publish(files, collection, local_snapshot)
        self.keys.retire([k.key_id for k in retire_after])
        return None

    def finish_ceremony(self) -> Outcome:
        """Sign a pending root with its approved requests, then publish what was held back."""
        ceremony = self.trust.pending(self.gun)
        if ceremony is None:
            raise TrustError(f"no root ceremony is pending for {self.gun}")
        waiting = []
        for key_id, request_id in ceremony.requests.items():
            request = self.keys.request(request_id)
            if request.state not in (
                pb.SIGNATURE_REQUEST_STATE_APPROVED,
                pb.SIGNATURE_REQUEST_STATE_FULFILLED,
            ):
                name = pb.SignatureRequestState.Name(request.state)
                state = name.removeprefix("SIGNATURE_REQUEST_STATE_").lower()
                waiting.append(
                    f"request {request_id} (root key {key_id}) is {state}: "
                    f"{len(request.approvers)} of {request.approvals_required} approvals"
                )
                last = PendingApprovalError(ROOT, request)
        if waiting:
            return Outcome(tuple(waiting), last)
        root_env = Envelope.from_bytes(ceremony.files[ROOT])
        payload = root_env.payload()
        for key_id, request_id in ceremony.requests.items():
            raw = self.keys.sign_approved(key_id, payload, ROOT, request_id)
            root_env.add_signature(ceremony.notary_ids[key_id], raw)
        files = dict(ceremony.files)
        files[ROOT] = root_env.to_bytes()
        collection = None if ceremony.operation == "init" else self.load()
        self._publish(files, collection, ceremony.local_snapshot)
        self.keys.retire(ceremony.retire_after)
        self.trust.clear_pending(self.gun)
        return Outcome((f"{ceremony.operation} of {self.gun}: approved, signed and published",))

    def abort_ceremony(self) -> Outcome:
        ceremony = self.trust.pending(self.gun)
        if ceremony is None:
            raise TrustError(f"no root ceremony is pending for {self.gun}")
        self.keys.retire_quietly(ceremony.created)
        self.trust.clear_pending(self.gun)
        return Outcome(
            (f"pending {ceremony.operation} of {self.gun} discarded; keys it made are retired",)
        )

    # -- signers -------------------------------------------------------------------------

    def add_signer(
        self, name: str, public_keys: Sequence[PublicKey] = (), create_key: bool = False
    ) -> Outcome:
        role = signer_role(name)
        if not public_keys and not create_key:
            raise TrustError("give the signer's public key (--key FILE) or --create-key")
        collection = self.load()
        self._held(collection, TARGETS)  # refuse before a key is made
        created: list[DaemonKey] = []
        try:
            keys = list(public_keys)
            if create_key:
                made = self.keys.create(role, f"{self.gun} signer {name}")
                created.append(made)
                keys.append(made.notary)
            delegations = collection.targets.delegations
            for key in keys:
                delegations.keys[key.key_id] = key
            ids = [k.key_id for k in keys]
            for wanted in (role, RELEASES):
                existing = collection.delegation(wanted)
                if existing is None:
                    delegations.roles.append(DelegatedRole(wanted, ids, 1, [""]))
                else:
                    existing.keyids[:] = sorted(set(existing.keyids) | set(ids))
            collection.changed.add(TARGETS)
            self._commit(collection)
        except BaseException:
            self.keys.retire_quietly([k.key_id for k in created])
            raise
        shown = ", ".join(ids)
        return Outcome((f"added signer {name} to {self.gun} (keys {shown})",))

    def remove_signer(self, name: str, force: bool = False) -> Outcome:
        role = signer_role(name)
        collection = self.load()
        delegated = collection.delegation(role)
        if delegated is None:
            raise TrustError(f"{self.gun} has no signer {name}")
        self._held(collection, TARGETS)
        delegations = collection.targets.delegations
        releases = collection.delegation(RELEASES)
        others = {k for d in delegations.roles if d.name not in (role, RELEASES) for k in d.keyids}
        if releases is not None:
            left = [k for k in releases.keyids if k not in delegated.keyids or k in others]
            if not left and not force:
                raise TrustError(
                    f"{name} is the last signer of {RELEASES} in {self.gun}; nobody could sign "
                    "releases afterwards (--force to remove anyway)"
                )
            releases.keyids[:] = left
            if len(left) < releases.threshold:
                releases.threshold = max(1, len(left))
        delegations.roles.remove(delegated)
        used = {k for d in delegations.roles for k in d.keyids}
        for key_id in list(delegations.keys):
            if key_id not in used:
                del delegations.keys[key_id]
        collection.delegations.pop(role, None)
        collection.changed.add(TARGETS)
        self._commit(collection)
        return Outcome((f"removed signer {name} from {self.gun}",))

    # -- tags ----------------------------------------------------------------------------

    def sign(self, tags: Sequence[TagToSign], signer: str = "") -> Outcome:
        """Sign every tag into each role that may hold it, in one publish (one signature
        per changed role, however many tags)."""
        if not tags:
            raise TrustError("no tag to sign")
        collection = self.load()
        lines = []
        for item in tags:
            roles = self._signable_roles(collection, item.tag, signer)
            target = FileMeta(length=item.length, hashes={"sha256": item.digest})
            for role in roles:
                collection.metadata(role).targets[item.tag] = target
                collection.changed.add(role)
            lines.append(
                f"signed {self.gun}:{item.tag} (sha256:{item.digest.hex()}, {item.length} "
                "bytes) into " + ", ".join(roles)
            )
        self._commit(collection)
        return Outcome(tuple(lines))

    def revoke(self, tag: str) -> Outcome:
        collection = self.load()
        roles = [
            r for r in [TARGETS, *collection.delegations] if tag in collection.metadata(r).targets
        ]
        if not roles:
            raise TrustError(f"{self.gun} has no signed tag {tag!r}")
        refused = []
        for role in roles:
            try:
                self._held(collection, role)
            except TrustError:
                refused.append(role)
        if refused:
            raise TrustError(
                f"{tag} is signed into {', '.join(refused)}, whose keys the daemon does not "
                "hold for you; nothing was revoked"
            )
        for role in roles:
            del collection.metadata(role).targets[tag]
            collection.changed.add(role)
        self._commit(collection)
        return Outcome((f"revoked {self.gun}:{tag} from " + ", ".join(roles),))

    def _signable_roles(self, collection: Collection, tag: str, signer: str) -> list[str]:
        """As docker: every direct delegation whose paths allow the tag and whose key we hold;
        targets itself when there are no delegations."""
        if signer:
            role = signer_role(signer)
            if collection.delegation(role) is None:
                raise TrustError(f"{self.gun} has no signer {signer}")
            candidates = [RELEASES, role] if collection.delegation(RELEASES) else [role]
        elif not collection.targets.delegations.roles:
            candidates = [TARGETS]
        else:
            candidates = [d.name for d in collection.targets.delegations.roles]
        roles = []
        for role in candidates:
            if role != TARGETS:
                delegated = collection.delegation(role)
                if delegated is None or posixpath.dirname(role) != TARGETS:
                    continue
                if not any(tag.startswith(p) for p in delegated.paths):
                    continue
            keys, _ = collection.role_keys(role)
            if self.keys.holding(keys):
                roles.append(role)
        if not roles:
            raise TrustError(
                f"the daemon holds no key (usable by you) of any role that may sign {tag} in "
                f"{self.gun}"
            )
        return roles

    # -- rotation ------------------------------------------------------------------------

    def rotate(
        self,
        role: str,
        server_managed: bool | None = None,
        old_root_key: Callable[[Iterable[PublicKey]], LegacyRootKey] | None = None,
    ) -> Outcome:
        """A new key for ``role``; root lists it in a new version signed by the old root keys
        (and, rotating root, by the new one too), so clients that trust the old root follow.

        snapshot: ``server_managed`` True moves it to notary-server, False into the token,
        None keeps it where it is. timestamp is always notary-server's.
        ``old_root_key``: for migrating a repository whose root key is still a notary key
        file, loads that key (given the root's keys) to add its one signature.
        """
        if role not in (ROOT, TARGETS, SNAPSHOT, TIMESTAMP):
            raise TrustError(f"cannot rotate {role!r}: one of root, targets, snapshot, timestamp")
        if role == TIMESTAMP and server_managed is False:
            raise TrustError("the timestamp key is always held by notary-server")
        if role in (ROOT, TARGETS) and server_managed:
            raise TrustError(f"the {role} key stays in the daemon's token, never on notary-server")
        collection = self.load()
        root = collection.root
        legacy = old_root_key(root.role_keys(ROOT).values()) if old_root_key else None
        if legacy is None:
            old_root_keys = self._held(collection, ROOT, all_held=True)
        else:
            old_root_keys = self.keys.holding(root.role_keys(ROOT).values())
            if len(old_root_keys) + 1 < root.roles[ROOT].threshold:
                raise TrustError(
                    f"root of {self.gun} needs {root.roles[ROOT].threshold} signatures; "
                    f"the old key file and the daemon give {len(old_root_keys) + 1}"
                )
        # Retire only keys this client's side held: notary-server's own keys (timestamp,
        # a server-managed snapshot) live in the daemon too, but are notary-server's to
        # drop (`signerd notary retire-unused`).
        ours = role in (ROOT, TARGETS) or (role == SNAPSHOT and collection.local_snapshot)
        old_keys = self.keys.holding(collection.role_keys(role)[0]) if ours else []
        local_snapshot = collection.local_snapshot
        if role == SNAPSHOT and server_managed is not None:
            local_snapshot = not server_managed
        remote = role == TIMESTAMP or (role == SNAPSHOT and not local_snapshot)
        created: list[DaemonKey] = []
        try:
            signers: dict[str, DaemonKey] = {}
            if remote:
                new_key = self.server.rotate_key(self.gun, role)
            else:
                quorum = role == ROOT and any(k.quorum for k in old_root_keys)
                made = self.keys.create(role, f"{self.gun} {role}", quorum=quorum)
                created.append(made)
                new_key = made.notary
                signers[role] = made
            for key_id in list(root.roles[role].keyids):
                root.revoke_key(role, key_id)
            root.roles[role] = RoleKeys([], 1)
            root.add_key(role, new_key)
            root.version += 1
            root.expires = self.settings.expires(ROOT, self._now())
            collection.local_snapshot = local_snapshot
            if role == TARGETS:
                collection.changed.add(TARGETS)
            files = self._signed_files(collection, signers)
            root_signers = list(old_root_keys) + ([signers[ROOT]] if role == ROOT else [])
            root_env = root.envelope()
            if legacy is not None:
                root_env.add_signature(legacy.notary_id, legacy.sign(root_env.payload()))
            pending = self._sign_root_and_publish(
                f"rotate-{role}",
                root_env,
                root_signers,
                files,
                collection,
                local_snapshot,
                created=created,
                retire_after=old_keys,
            )
        except BaseException:
            self.keys.retire_quietly([k.key_id for k in created])
            raise
        if pending is not None:
            return pending
        lines = [f"rotated the {role} key of {self.gun}: now {new_key.key_id}"]
        if old_keys:
            lines.append("retired the old daemon key " + ", ".join(k.key_id for k in old_keys))
        return Outcome(tuple(lines))

    # -- deleting ------------------------------------------------------------------------

    def delete(self, remote: bool, retire_keys: bool = False) -> Outcome:
        lines = []
        if remote:
            self.server.delete(self.gun)
            lines.append(f"deleted the trust data of {self.gun} on {self.server.url}")
        self.trust.forget(self.gun)
        lines.append(f"forgot the trusted root of {self.gun}")
        if retire_keys:
            ids = [r.key_id for r in self.keys.records()]
            self.keys.retire(ids)
            lines.append(f"retired {len(ids)} daemon keys of {self.gun}")
        return Outcome(tuple(lines))

    # -- signing and publishing ----------------------------------------------------------

    def _held(self, collection: Collection, role: str, all_held: bool = False) -> list[DaemonKey]:
        """The daemon keys of ``role`` we will sign with: enough for its threshold."""
        keys, threshold = collection.role_keys(role)
        held = self.keys.holding(keys)
        if not held:
            raise TrustError(f"the daemon holds no key of {role} in {self.gun} that you may use")
        if len(held) < threshold:
            raise TrustError(
                f"{role} of {self.gun} needs {threshold} signatures; the daemon holds "
                f"{len(held)} of its keys"
            )
        return held if all_held else held[:threshold]

    def _sign(self, env: Envelope, keys: Iterable[DaemonKey], role: str) -> Envelope:
        payload = env.payload()
        for key in keys:
            env.add_signature(key.notary_id, self.keys.sign(key, payload, role))
        return env

    def _signed_files(
        self, collection: Collection, signers: dict[str, DaemonKey]
    ) -> dict[str, bytes]:
        """New versions of every changed targets role, signed (snapshot comes at publish)."""
        now = self._now()
        files = {}
        for role in sorted(collection.changed - {ROOT, SNAPSHOT, TIMESTAMP}):
            meta = collection.metadata(role)
            meta.version += 1
            meta.expires = self.settings.expires(role, now)
            keys = [signers[role]] if role in signers else self._held(collection, role)
            for _ in range(_VERSION_ATTEMPTS):
                try:
                    files[role] = self._sign(meta.envelope(), keys, role).to_bytes()
                    break
                except PermissionDeniedError as exc:
                    # An earlier publish that notary-server refused (a race) left this
                    # version signed by the daemon with other content: take the next.
                    if exc.reason != "VERSION_ALREADY_SIGNED" and "already signed" not in str(exc):
                        raise
                    meta.version += 1
            else:
                raise TrustError(f"{role}: the daemon refused {_VERSION_ATTEMPTS} versions")
        return files

    def _commit(self, collection: Collection) -> None:
        files = self._signed_files(collection, {})
        self._publish(files, collection, collection.local_snapshot)

    def _publish(
        self, files: dict[str, bytes], collection: Collection | None, local_snapshot: bool
    ) -> None:
        """One POST of every changed file (and, with our own snapshot key, a new snapshot)."""
        if local_snapshot:
            files = {**files, SNAPSHOT: self._snapshot(files, collection)}
        self.server.publish(self.gun, files)
        if ROOT in files:
            self.trust.save_root(self.gun, files[ROOT])

    def _snapshot(self, files: dict[str, bytes], collection: Collection | None) -> bytes:
        """A new snapshot over the current files and the changed ones, signed by our key."""
        previous = collection.snapshot if collection is not None else None
        meta = dict(previous.meta) if previous is not None else {}
        for role, data in files.items():
            meta[role] = FileMeta.from_data(data)
        snapshot = Snapshot(
            meta=meta,
            version=(previous.version if previous is not None else 0) + 1,
            expires=self.settings.expires(SNAPSHOT, self._now()),
        )
        root = Root.from_envelope(Envelope.from_bytes(files[ROOT])) if ROOT in files else None
        if root is None and collection is not None:
            root = collection.root
        assert root is not None  # init always publishes a root
        held = self.keys.holding(root.role_keys(SNAPSHOT).values())
        if not held:
            raise TrustError(f"the daemon holds no snapshot key of {self.gun} that you may use")
        return self._sign(snapshot.envelope(), held[:1], SNAPSHOT).to_bytes()


def signer_role(name: str) -> str:
    """``targets/NAME`` for a docker-trust signer name (docker's rules: no '/', not 'releases')."""
    import re

    if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,63}", name) or name == "releases":
        raise TrustError(
            f"signer name {name!r}: lower-case letters, digits, '_', '.', '-' (not 'releases')"
        )
    return f"targets/{name}"


def _pending_lines(gun: str, operation: str, requests: dict[str, str]) -> tuple[str, ...]:
    lines = [f"{operation} of {gun} waits for quorum approvals; nothing was published yet."]
    for key_id, request_id in requests.items():
        lines.append(f"  request {request_id} (root key {key_id})")
    lines.append(
        "Approvers: `signerd request show ID`, then `signerd request approve ID "
        f"--payload-sha256 ...`; then `signer-trust ceremony finish {gun}`."
    )
    return tuple(lines)
