"""A securesystemslib ``Signer`` whose private key lives in signerd.

Private key URI: ``signer://HOST:PORT/KEY_ID`` (optionally ``?config=/path/client.toml``).
The URI names the daemon and the key; the TLS material (CA, client certificate and key)
is not part of it, because it is per-machine, not per-key: it comes from the standard
client config (``SIGNER_CLIENT_CONFIG`` or the ``SIGNER_*`` variables, see ``config.py``)
or from the file named by ``config=``. No secrets handler is needed: nothing is typed in.

Importing ``signer_client`` registers the scheme, as securesystemslib expects::

    SIGNER_FOR_URI_SCHEME["signer"] = DaemonSigner

Every signature the daemon returns is verified against the public key the caller trusts
before it is handed back: a daemon that signs with the wrong key (or mangles the bytes)
raises ``SignatureMismatchError`` here rather than producing metadata clients reject.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from securesystemslib.exceptions import UnverifiedSignatureError
from securesystemslib.signer import (
    SIGNER_FOR_URI_SCHEME,
    Key,
    SecretsHandler,
    Signature,
    Signer,
)

from signer_client.client import SignerClient
from signer_client.config import ClientConfig
from signer_client.errors import ClientError, RateLimitedError, SignatureMismatchError

SCHEME = "signer"

_clients: dict[ClientConfig, SignerClient] = {}
_clients_lock = threading.Lock()


def key_uri(address: str, key_id: str) -> str:
    """The private key URI of ``key_id`` on the daemon at ``address`` (HOST:PORT)."""
    return f"{SCHEME}://{address}/{key_id}"


def parse_uri(uri: str) -> tuple[str, str, str | None]:
    """``signer://HOST:PORT/KEY_ID[?config=PATH]`` -> (address, key_id, config path)."""
    parts = urlsplit(uri)
    key_id = parts.path.lstrip("/")
    if parts.scheme != SCHEME or not parts.netloc or not key_id or "/" in key_id:
        raise ValueError(f"not a {SCHEME}:// key URI: {uri!r} (want {SCHEME}://HOST:PORT/KEY_ID)")
    config = parse_qs(parts.query).get("config", [None])[0]
    return parts.netloc, key_id, config


def shared_client(address: str, config_path: str | None = None) -> SignerClient:
    """One client (one channel) per daemon and config, shared by every signer in the process.

    The cache key is the whole config (address, CA, certificate, key), so a changed
    environment or another daemon on a reused port never gets a stale channel.
    """
    if config_path:
        config = replace(ClientConfig.from_file(Path(config_path)), address=address)
    else:
        config = ClientConfig.from_env(address)
    with _clients_lock:
        client = _clients.get(config)
        if client is None:
            client = _clients[config] = SignerClient(config)
        return client


class DaemonSigner(Signer):
    """Signs with a key held by signerd; checks every signature before returning it."""

    def __init__(self, client: SignerClient, key_id: str, public_key: Key) -> None:
        if public_key.keyid != key_id:
            raise ValueError(f"public key {public_key.keyid} is not key {key_id}")
        self.client = client
        self.key_id = key_id
        self._public_key = public_key

    @classmethod
    def from_priv_key_uri(
        cls,
        priv_key_uri: str,
        public_key: Key,
        secrets_handler: SecretsHandler | None = None,
    ) -> DaemonSigner:
        address, key_id, config_path = parse_uri(priv_key_uri)
        return cls(shared_client(address, config_path), key_id, public_key)

    @property
    def public_key(self) -> Key:
        return self._public_key

    def sign(self, payload: bytes) -> Signature:
        response = self.client.sign(self.key_id, payload)
        return self._checked(response.signature, payload)

    def _checked(self, raw: bytes, payload: bytes) -> Signature:
        signature = Signature(self.key_id, raw.hex())
        try:
            self._public_key.verify_signature(signature, payload)
        except UnverifiedSignatureError:
            raise SignatureMismatchError(
                f"daemon signature for key {self.key_id} does not verify with its public key"
            ) from None
        return signature


def sign_many(
    items: Sequence[tuple[DaemonSigner, bytes]],
    max_batch: int = 1024,
    progress: Callable[[int, int], None] | None = None,
    rate_limit_wait: float = 300.0,
) -> tuple[list[Signature | ClientError], int]:
    """Sign many (signer, payload) pairs with as few SignBatch round trips as possible.

    Items going to the same daemon connection share batches (each item names its key).
    A batch over the principal's rate-limit burst is refused whole by the daemon, which
    names the burst: the rest goes in batches of that size (remembered per connection).
    A batch refused for an empty bucket is sent again after the delay the daemon names,
    up to ``rate_limit_wait`` seconds in all (nothing was signed, so this is safe).
    ``progress`` hears (signed so far, total) after each batch.
    Returns one Signature or ClientError per item, in order, and the round trips made.
    """
    results: list[Signature | ClientError | None] = [None] * len(items)
    by_client: dict[int, list[int]] = {}
    for index, (signer, _) in enumerate(items):
        by_client.setdefault(id(signer.client), []).append(index)
    round_trips = 0
    done = 0
    waited = 0.0
    for indexes in by_client.values():
        client = items[indexes[0]][0].client
        start = 0
        while start < len(indexes):
            size = min(max_batch, client.max_batch or max_batch)
            chunk = indexes[start : start + size]
            try:
                batch = client.sign_batch_items([(items[i][0].key_id, items[i][1]) for i in chunk])
            except RateLimitedError as exc:
                round_trips += 1
                if exc.burst is not None and exc.burst < len(chunk):
                    client.max_batch = exc.burst
                    continue
                wait = exc.retry_after
                if wait is None or waited + wait > rate_limit_wait:
                    raise
                time.sleep(wait + 0.01 + 0.05 * random.random())
                waited += wait
                continue
            round_trips += 1
            start += len(chunk)
            for index, outcome in zip(chunk, batch, strict=True):
                signer, payload = items[index]
                if outcome.error is not None:
                    results[index] = outcome.error
                    continue
                try:
                    results[index] = signer._checked(outcome.signature, payload)
                except SignatureMismatchError as exc:
                    results[index] = exc
            done += len(chunk)
            if progress is not None:
                progress(done, len(items))
    return [r for r in results if r is not None], round_trips


SIGNER_FOR_URI_SCHEME[SCHEME] = DaemonSigner
