"""Turning (key, payload) requests into signatures, in as few round trips as possible.

Keys are named by private key URIs, the securesystemslib way, so any registered Signer
works (an offline ``file2:`` key as much as a daemon key). Requests for ``signer://``
keys are sent together in SignBatch calls; other signers sign one at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from securesystemslib.signer import Key, Signature, Signer

from signer_client.repo.pin import secrets_handler
from signer_client.tuf_signer import DaemonSigner, sign_many


@dataclass(frozen=True)
class KeyRef:
    """A public key and the URI of its private half."""

    key: Key
    uri: str

    @property
    def key_id(self) -> str:
        return self.key.keyid


@dataclass
class SigningStats:
    """What publishing cost: signatures made and signing round trips to signers."""

    signatures: int = 0
    round_trips: int = 0


def sign_all(
    requests: Sequence[tuple[KeyRef, bytes]],
    stats: SigningStats,
    progress: Callable[[int, int], None] | None = None,
) -> list[Signature | Exception]:
    """One result per request, in order: a verified Signature or the error for that key.

    ``progress`` hears (daemon signatures so far, total) after each SignBatch.
    """
    results: list[Signature | Exception | None] = [None] * len(requests)
    batched: list[tuple[int, DaemonSigner, bytes]] = []
    for index, (ref, payload) in enumerate(requests):
        try:
            signer = Signer.from_priv_key_uri(ref.uri, ref.key, secrets_handler)
        except Exception as exc:  # any plugin may fail in its own way
            results[index] = _explained(exc)
            continue
        if isinstance(signer, DaemonSigner):
            batched.append((index, signer, payload))
            continue
        try:
            results[index] = signer.sign(payload)
            stats.round_trips += 1
        except Exception as exc:
            results[index] = _explained(exc)
    if batched:
        outcomes, trips = sign_many(
            [(signer, payload) for _, signer, payload in batched], progress=progress
        )
        stats.round_trips += trips
        for (index, _, _), outcome in zip(batched, outcomes, strict=True):
            results[index] = outcome
    done = [r for r in results if r is not None]
    stats.signatures += sum(isinstance(r, Signature) for r in done)
    return done


def _explained(exc: Exception) -> Exception:
    """One line that says what failed: some signer libraries raise bare ``PinIncorrect()``."""
    lines = str(exc).strip().splitlines()
    if len(lines) == 1 and type(exc).__module__.startswith(("signer_client", "builtins")):
        return exc
    return RuntimeError(f"{type(exc).__name__}: {lines[0] if lines else 'failed'}")
