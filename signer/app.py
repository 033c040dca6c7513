"""Assemble the daemon's parts from a config: token, registry, policy, audit, services.

Kept apart from ``server.py`` so tools (``signerd check``, tests, benchmarks) can build
the same stack without a network listener.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from signer import identity
from signer.audit import AuditLog
from signer.audit.checkpoint import Checkpointer
from signer.audit_key import AuditKey
from signer.certificates import CertificateIssuer
from signer.config import SignerConfig, open_state
from signer.keys import KeyManager
from signer.metrics import NO_METRICS, Observer, Reporter
from signer.notary.rules import DIALECT as NOTARY
from signer.notary.rules import NotaryRules
from signer.notary.store import NotaryKeyStore
from signer.pipeline import Administration, Pipeline, Recorder
from signer.pipeline.guards import ForDialect
from signer.policy import AllowAuthenticated, Policy
from signer.policy.ratelimit import rate_limiter_of
from signer.policy.tuf import TufRules, VersionStore
from signer.quorum import QuorumClaim, QuorumGuard, QuorumService, QuorumStore
from signer.registry import KeyRegistry, KeyState
from signer.storage import Backend
from signer.storage.interfaces import Buckets
from signer.token import Token, TokenSettings

log = logging.getLogger(__name__)


@dataclass
class Mismatch:
    """A disagreement between the registry and the token found at start-up."""

    key_id: str
    object_id: str
    problem: str

    def __str__(self) -> str:
        who = f"key {self.key_id}" if self.key_id else f"token object {self.object_id}"
        return f"{who}: {self.problem}"


def load_policy(
    config: SignerConfig, buckets: Buckets | None = None, fallback: bool = True
) -> Policy:
    """The configured policy; without a policy file, any authenticated client may act.

    ``buckets``: the rate-limit store (the daemon's is shared by its workers).
    A worker (re)started while the file is broken falls back to the last good policy the
    supervisor kept (``config.policy_fallback``), so it enforces what its siblings do;
    a reload passes ``fallback=False`` and keeps the policy it has instead."""
    if config.policy.file is None:
        return AllowAuthenticated()
    from signer.errors import ConfigError
    from signer.policy.file import FilePolicy  # issue: policy files

    try:
        return FilePolicy.load(config.policy.file, buckets)
    except ConfigError as exc:
        kept = config.policy_fallback
        if not fallback or kept is None or not kept.exists():
            raise
        log.error("%s; enforcing the last good policy (%s) until it is fixed", exc, kept)
        return FilePolicy.load(kept, buckets)


class SignerApp:
    def __init__(
        self,
        config: SignerConfig,
        token: Token | None = None,
        backend: Backend | None = None,
        metrics: Observer = NO_METRICS,
    ) -> None:
        self.config = config
        self.metrics = metrics  # signer.metrics: the daemon's, or the no-op observer
        # The CRL ([tls] crl): ConfigError if it is unusable and no last good copy is kept.
        identity.configure(config.tls, config.crl_fallback)
        self.token = token or Token(
            TokenSettings(
                module=config.token.module,
                label=config.token.label,
                pin=config.token.read_pin(),
                serial=config.token.serial,
                probe_interval=config.token.probe_interval,
                hang_seconds=config.token.hang_seconds,
            ),
            metrics,
        )
        config.state.dir.mkdir(parents=True, exist_ok=True)
        self.state = backend or open_state(config)
        self.registry = KeyRegistry(self.state.keys())
        self.audit = AuditLog(
            self.state.audit(), replica=config.state.replica_name, metrics=metrics
        )
        self.buckets = self.state.buckets()  # shared by workers (and replicas)
        self.policy: Policy = load_policy(config, self.buckets)
        self.versions = VersionStore(self.state.versions())
        self.requests = QuorumStore(self.state.quorum())
        self.notary_keys = NotaryKeyStore(self.state.notary())
        self.tuf_rules = TufRules(self.versions)
        current_policy = self.current_policy
        self.recorder = Recorder(self.audit, metrics)
        self.reporter = Reporter(  # hands values over; reads key and quorum counts
            metrics, self.registry.counts, self.requests.open_counts, config.metrics.refresh_seconds
        )
        self.admin = Administration(self.recorder, current_policy)
        self.keys = KeyManager(self.token, self.registry, self.admin)
        self.certificates = CertificateIssuer(self.token, self.registry, self.admin)
        # Payload guards, in order: the notary dialect's rules, quorum approval, then the
        # TUF rules, which record the version being signed, and last the quorum claim,
        # which uses up the approval: both only for a signature about to be made.
        tuf = ForDialect("tuf", self.tuf_rules)
        self.pipeline = Pipeline(
            self.token,
            self.registry,
            self.recorder,
            current_policy,
            config.server.max_payload_bytes,
            guards=[
                ForDialect(NOTARY, NotaryRules()),
                QuorumGuard(self.requests),
                tuf,
                QuorumClaim(self.requests),
            ],
        )
        self.quorum = QuorumService(
            self.requests,
            self.registry,
            self.admin,
            [self.tuf_rules],
            config.server.max_payload_bytes,
        )
        self.checkpointer = Checkpointer(
            self.audit,
            AuditKey(self.token, self.registry, self.audit),
            config.audit,
        )

    def current_policy(self) -> Policy:
        """The policy in force: each request reads it once (see ``reload``)."""
        return self.policy

    def open(self) -> None:
        try:
            self.token.open()
        finally:  # checkpoints retry until the token is usable
            self.checkpointer.start()
            self.reporter.start()

    def reload(self) -> None:
        """Re-read the policy (SIGHUP). A policy that fails to load leaves the old one."""
        self.token.reset_lockout(self.config.token.read_pin)  # a refused PIN: try again
        identity.reload(self.config.tls)  # the CRL, likewise: a bad one leaves the old one
        try:
            policy = load_policy(self.config, self.buckets, fallback=False)
        except Exception as exc:
            log.error("policy reload failed, keeping the current policy: %s", exc)
            return
        limiter = rate_limiter_of(policy)
        if limiter is not None:  # a reload is no way to refill one's bucket
            limiter.adopt(rate_limiter_of(self.policy))
        # One object carries rules, groups, rate limits, TUF limits and quorum settings:
        # each request reads it once, so it sees either the old policy or the new one.
        self.policy = policy
        log.info("policy reloaded")

    def close(self) -> None:
        self.reporter.stop()
        self.checkpointer.stop()  # signs a last checkpoint while the token is open
        self.token.close()
        self.audit.close()
        self.versions.close()
        self.requests.close()
        self.notary_keys.close()
        self.buckets.close()
        self.registry.close()
        self.state.close()

    def check(self) -> list[Mismatch]:
        """Compare the registry with the token: the token is the truth for key material."""
        objects = self.token.objects()
        private = {o.object_id for o in objects if o.object_class == "private"}
        known: set[str] = set()
        problems = []
        for record in self.registry.all():
            known.add(record.object_id)
            if record.state is KeyState.DESTROYED:
                if record.object_id in private:
                    problems.append(
                        Mismatch(
                            record.key_id, record.object_id, "destroyed, yet still on the token"
                        )
                    )
            elif record.object_id not in private:
                problems.append(
                    Mismatch(
                        record.key_id, record.object_id, "private key object missing from the token"
                    )
                )
        for obj in objects:
            if obj.object_id not in known and obj.object_class == "private":
                problems.append(
                    Mismatch(
                        "", obj.object_id, f"on the token (label {obj.label!r}) but not registered"
                    )
                )
        return problems
