"""The comparison half of ``bench_repo.py``: plain python-tuf, then ``adopt`` of its result.

The plain script is what a python-tuf user writes without a signing service: keys in
memory (ECDSA P-256 ``CryptoSigner``s, as the daemon's keys in the first half), the
Metadata API, no staging, every file written in one go. It builds the same repository
(hash bins, the same target files) through the same phases, so the two columns differ
only in where the keys are and what ``tuf-repo`` does beside signing (staging files,
version rules, checks before writing).

The 10,000-target repository it builds is then adopted by ``tuf-repo`` (every root and
role verified, every target file checked against its hashes and copied) and every role
rotated into the daemon: root v2 signed by the old in-memory root key (given as a
``file2:`` URI) and the new daemon key.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import (
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    SuccinctRoles,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from signer_client.repo import DaemonKeys, KeyRef, Repository, RepoStore, collect_files, verify
from signer_client.repo.adopt import adopt
from signer_client.repo.repository import TOP_LEVEL

Phase = tuple[str, float, str]


class PlainRepository:
    """python-tuf's Metadata API and in-memory keys, hash bins as in the first half."""

    def __init__(self, directory: Path, bins: int) -> None:
        self.meta = directory / "metadata"
        self.targets_dir = directory / "targets"
        self.meta.mkdir(parents=True)
        self.serializer = JSONSerializer(compact=False)
        self.signers = {role: CryptoSigner.generate_ecdsa() for role in (*TOP_LEVEL, "bins")}
        expires = datetime.now(UTC).replace(microsecond=0) + timedelta(days=7)
        self.root = Metadata(Root(expires=expires, consistent_snapshot=True))
        for role in TOP_LEVEL:
            self.root.signed.add_key(self.signers[role].public_key, role)
        self.targets = Metadata(Targets(expires=expires))
        self.succinct = SuccinctRoles([], 1, bins.bit_length() - 1, "bins")
        self.targets.signed.delegations = Delegations(keys={}, succinct_roles=self.succinct)
        self.targets.signed.add_key(self.signers["bins"].public_key)
        self.bins = {name: Metadata(Targets(expires=expires)) for name in self.succinct.get_roles()}
        self.snapshot = Metadata(Snapshot(expires=expires))
        self.timestamp = Metadata(Timestamp(expires=expires))
        self.signatures = 0

    def write(self, md: Metadata[Any], role: str, key: str) -> None:
        md.signatures.clear()
        md.sign(self.signers[key])
        self.signatures += 1
        name = "timestamp.json" if role == "timestamp" else f"{md.signed.version}.{role}.json"
        md.to_file(str(self.meta / name), self.serializer)

    def publish(self, roles: list[str], first: bool = False) -> None:
        """Write the given bins (and root, targets the first time), snapshot, timestamp."""
        if first:
            self.write(self.root, "root", "root")
            self.write(self.targets, "targets", "targets")
        for name in roles:
            if not first:
                self.bins[name].signed.version += 1
            self.write(self.bins[name], name, "bins")
        if not first:
            self.snapshot.signed.version += 1
            self.timestamp.signed.version += 1
        meta = {"targets.json": MetaFile(self.targets.signed.version)}
        meta.update({f"{n}.json": MetaFile(md.signed.version) for n, md in self.bins.items()})
        self.snapshot.signed.meta = meta
        self.write(self.snapshot, "snapshot", "snapshot")
        self.timestamp.signed.snapshot_meta = MetaFile(self.snapshot.signed.version)
        self.write(self.timestamp, "timestamp", "timestamp")

    def add(self, files: list[tuple[str, Path]]) -> set[str]:
        """Hash, copy to ``DIR/SHA256.NAME`` and list each file in its bin."""
        touched = set()
        for path, local in files:
            info = TargetFile.from_file(path, str(local), ["sha256"])
            directory, sep, name = path.rpartition("/")
            dest = self.targets_dir / f"{directory}{sep}{info.hashes['sha256']}.{name}"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(local, dest)
            role = self.succinct.get_role_for_target(path)
            self.bins[role].signed.targets[path] = info
            touched.add(role)
        return touched


def plain(
    args: argparse.Namespace, tmp: Path, files: list[tuple[str, Path]]
) -> tuple[list[Phase], PlainRepository]:
    phases: list[Phase] = []
    t = time.perf_counter()
    repo = PlainRepository(tmp / "plain", args.bins)
    repo.publish(list(repo.bins), first=True)
    phases.append(("init + delegate", time.perf_counter() - t, f"{repo.signatures} signatures"))

    t = time.perf_counter()
    touched = repo.add(files)
    phases.append(("add", time.perf_counter() - t, f"{len(touched)} roles"))

    t, before = time.perf_counter(), repo.signatures
    repo.publish(sorted(touched))
    phases.append(("publish", time.perf_counter() - t, f"{repo.signatures - before} signatures"))

    t, before = time.perf_counter(), repo.signatures
    changed = files[: args.changes]
    for _, local in changed:
        local.write_bytes(os.urandom(args.size))
    touched = repo.add(changed)
    repo.publish(sorted(touched))
    note = f"{len(touched)} roles, {repo.signatures - before} signatures"
    phases.append(("change + publish", time.perf_counter() - t, note))
    return phases, repo


def compare(args: argparse.Namespace, tmp: Path, keys: DaemonKeys, ours: list[Phase]) -> None:
    files = collect_files([tmp / "files"])
    theirs, repo = plain(args, tmp, files)
    rows = [
        (o[0], f"{o[1]:6.2f} s", o[2], f"{p[1]:6.2f} s", p[2])
        for o, p in zip(ours, theirs, strict=False)
    ]

    key_dir = tmp / "plain-keys"
    key_dir.mkdir()
    (key_dir / "root.pem").write_bytes(repo.signers["root"].private_bytes)
    old_root = KeyRef(repo.signers["root"].public_key, f"file2:{key_dir / 'root.pem'}")
    store = RepoStore(tmp / "adopted")
    t = time.perf_counter()
    report = adopt(tmp / "plain", store, [old_root])
    rows.append(
        (
            f"adopt the python-tuf repository ({report.targets} targets)",
            f"{time.perf_counter() - t:6.2f} s",
            f"{report.metadata_files} metadata + {report.files_copied} target files",
            "",
            "",
        )
    )

    t = time.perf_counter()
    adopted = Repository(store)
    for role in TOP_LEVEL:
        old = repo.signers[role].public_key.keyid
        adopted.rotate(role, [keys.create(role)], [old])
    adopted.rotate("bins", [keys.create("bins")], [repo.signers["bins"].public_key.keyid])
    result = adopted.publish()
    stats = result.stats
    rows.append(
        (
            "rotate every role into signerd + publish",
            f"{time.perf_counter() - t:6.2f} s",
            f"{stats.signatures} signatures in {stats.round_trips} round trip(s)",
            "",
            "",
        )
    )
    t = time.perf_counter()
    sample = [files[0][0], files[len(files) // 2][0], files[-1][0]]
    verify((tmp / "plain" / "metadata" / "1.root.json").read_bytes(), sample, directory=store.path)
    rows.append(
        (
            "ngclient from the old root v1 + 3 downloads",
            f"{time.perf_counter() - t:6.2f} s",
            f"root v{result.published.get('root')}",
            "",
            "",
        )
    )

    print()
    print(f"side by side ({args.targets} targets, {args.bins} hash bins, ECDSA P-256):")
    print("| phase | tuf-repo + signerd | | plain python-tuf, keys in memory | |")
    print("|---|---|---|---|---|")
    for name, a, note_a, b, note_b in rows:
        print(f"| {name} | {a.strip()} | {note_a} | {b.strip() or '-'} | {note_b} |")
