"""Retire server-managed notary keys nobody uses any more.

notary-server creates timestamp and snapshot keys here (CreateKey) but never deletes
them: a key it rotated away, or one of a repository deleted on the server, stays active
in the token for ever. This finds such keys and retires them (no longer signs; the public
key stays readable, and ``signerd keys destroy`` can remove it later):

* superseded: a newer key of the same GUN and role has signed since this key last
  signed (or, if it never signed, since it was created), and this key has not signed for
  ``unused_days``. The newest key of a GUN and role is never superseded;
* idle repository (opt-in, ``idle_repositories``): no key of the GUN has signed for
  ``unused_days``: all of its server-managed keys.

"Signed" is read from the audit log (allowed ``sign``/``sign-raw`` entries). Each
retirement is audited (operation ``retire``, principal ``signerd:notary-retire``) before
it takes effect. Run by ``signerd notary retire-unused`` and, with ``[notary]
retire_unused_days`` set, on a schedule inside the daemon.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from signer.audit.log import AuditLog, last_signatures
from signer.config import NotaryConfig
from signer.errors import SignerError
from signer.notary.store import NotaryKey, NotaryKeyStore
from signer.pipeline.admission import resource_of
from signer.pipeline.auditing import Recorder, allowed_event
from signer.registry import KeyRecord, KeyRegistry, KeyState

log = logging.getLogger(__name__)

PRINCIPAL = "signerd:notary-retire"
DAY = 86400.0


@dataclass(frozen=True)
class Candidate:
    key: KeyRecord
    notary_id: str
    reason: str


def plan(
    keys: list[tuple[NotaryKey, KeyRecord]],
    last_signed: dict[str, float],
    now: float,
    unused_days: float,
    idle_repositories: bool = False,
) -> list[Candidate]:
    """Which active server-managed keys to retire, and why (pure: no state touched)."""
    cutoff = now - unused_days * DAY
    used = {record.key_id: last_signed.get(record.key_id, 0.0) for _, record in keys}
    groups: dict[tuple[str, str], list[tuple[NotaryKey, KeyRecord]]] = defaultdict(list)
    by_gun: dict[str, list[tuple[NotaryKey, KeyRecord]]] = defaultdict(list)
    for pair in keys:
        groups[(pair[0].gun, pair[0].role)].append(pair)
        by_gun[pair[0].gun].append(pair)
    found: dict[str, Candidate] = {}
    for (gun, role), members in groups.items():
        members.sort(key=lambda pair: (pair[1].created_at, pair[1].key_id))
        for i, (nkey, record) in enumerate(members[:-1]):
            since = max(used[record.key_id], record.created_at)
            if since > cutoff:
                continue
            for newer_key, newer in members[i + 1 :]:
                if used[newer.key_id] > since:
                    found[record.key_id] = Candidate(
                        record,
                        nkey.notary_id,
                        f"superseded: {role} key {newer_key.notary_id} of {gun} has signed "
                        f"since; unused for {unused_days:g} days",
                    )
                    break
    if idle_repositories:
        for gun, members in by_gun.items():
            latest = max(max(used[r.key_id], r.created_at) for _, r in members)
            if latest > cutoff:
                continue
            for nkey, record in members:
                found.setdefault(
                    record.key_id,
                    Candidate(
                        record,
                        nkey.notary_id,
                        f"idle repository: no key of {gun} has signed for {unused_days:g} days",
                    ),
                )
    return sorted(found.values(), key=lambda c: (c.key.repository, c.key.role, c.key.created_at))


class Retirer:
    """Finds and retires unused server-managed keys; every retirement audited first."""

    def __init__(
        self,
        registry: KeyRegistry,
        store: NotaryKeyStore,
        recorder: Recorder,
        audit: AuditLog | Path,
    ) -> None:
        self.registry = registry
        self.store = store
        self.recorder = recorder
        self.audit = audit  # where the last signatures are read

    def candidates(self, unused_days: float, idle_repositories: bool = False) -> list[Candidate]:
        active = []
        for nkey in self.store.all():
            try:
                record = self.registry.get(nkey.key_id)
            except SignerError:
                continue
            if record.state is KeyState.ACTIVE:
                active.append((nkey, record))
        return plan(
            active, last_signatures(self.audit), time.time(), unused_days, idle_repositories
        )

    def retire(self, candidates: list[Candidate]) -> list[Candidate]:
        """Retire each candidate still active; the audit entry comes first (fail closed)."""
        done = []
        for candidate in candidates:
            if self.registry.get(candidate.key.key_id).state is not KeyState.ACTIVE:
                continue
            self.recorder.record(
                allowed_event(
                    PRINCIPAL,
                    "retire",
                    resource_of(candidate.key),
                    detail=f"notary key {candidate.notary_id}: {candidate.reason}"[:1000],
                )
            )
            self.registry.set_state(candidate.key.key_id, KeyState.RETIRED)
            log.info("retired notary key %s: %s", candidate.notary_id, candidate.reason)
            done.append(candidate)
        return done


class RetireSchedule:
    """Runs the retirement every ``[notary] retire_interval_seconds`` in a background
    thread, with the section's ``retire_unused_days`` and ``retire_idle_repositories``."""

    def __init__(self, retirer: Retirer, settings: NotaryConfig) -> None:
        self.retirer = retirer
        self.settings = settings
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="notary-retire", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.settings.retire_interval_seconds):
            try:
                found = self.retirer.candidates(
                    self.settings.retire_unused_days, self.settings.retire_idle_repositories
                )
                self.retirer.retire(found)
            except Exception:  # a failed round (audit log busy, disk full) tries again later
                log.exception("scheduled notary key retirement failed")
