"""The PKCS#11 token: the only module that imports PKCS#11.

Why it looks the way it does:

* python-pkcs11 calls ``C_Initialize`` without ``CKF_OS_LOCKING_OK``, so SoftHSM switches
  its own locking off while python-pkcs11 releases the GIL around every call. Two threads
  in the module at once crash it. Every token call here therefore runs under one lock,
  on one logged-in session per process. The critical section is short (one ``C_Sign``).
* Finding an object grows with the number of objects on the token (0.3 ms with 10, ~10 ms
  with 400), so private-key handles are cached by object id.
* Tokens fail: a session is closed under us, the device goes away, the module is
  re-initialised. Such faults become ``TokenUnavailable`` (gRPC UNAVAILABLE) and a
  background healer re-initialises the module, re-opens and re-logs-in with backoff. No
  restart is needed.
* Never fork after ``C_Initialize``: worker processes each open the token themselves.
* Workers share the token: a key made by one must sign at once through the others, and a
  key destroyed by one must not sign from another's cached handle. So an object that is
  not found (or whose cached handle the module no longer knows) is looked for again, on a
  re-initialised module (SoftHSM indexes objects per module instance), before it is
  reported missing; every path (sign, sign_many, public_key, destroy,
  security_attributes) does this the same way (``_locate``).
* A refused PIN is tried once: a real HSM locks the user PIN after a few wrong tries, so
  the healer stops and health says why until ``reset_lockout`` (SIGHUP) or a restart.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple, TypeVar

import pkcs11
from asn1crypto.core import OctetString
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11
from pkcs11.util.ec import encode_named_curve_parameters

from signer.algorithms import Algorithm
from signer.errors import FailedPrecondition, InvalidArgument, ServiceError, TokenUnavailable
from signer.metrics import NO_METRICS, Observer

log = logging.getLogger(__name__)

T = TypeVar("T")

# Errors that mean "the token, the session or the module is gone": heal, report UNAVAILABLE.
_FAULTS: tuple[type[Exception], ...] = (
    p11.SessionHandleInvalid,
    p11.SessionClosed,
    p11.DeviceError,
    p11.DeviceRemoved,
    p11.DeviceMemory,
    p11.TokenNotPresent,
    p11.TokenNotRecognised,
    p11.UserNotLoggedIn,
    p11.GeneralError,
    p11.FunctionFailed,
    p11.SlotIDInvalid,
    p11.NoSuchToken,
    p11.ObjectHandleInvalid,
    p11.KeyHandleInvalid,
    p11.OperationActive,
)

# Anything the module raises while (re)opening or probing: keep healing, never crash.
_ANY_P11: tuple[type[Exception], ...] = (*_FAULTS, p11.PKCS11Error)

# What a failed re-open raises: module errors, or a refused login (TokenUnavailable).
_REOPEN_FAILURES: tuple[type[Exception], ...] = (*_ANY_P11, TokenUnavailable)

# Errors of a handle that no longer names an object (destroyed by another process).
_STALE_HANDLE: tuple[type[Exception], ...] = (p11.ObjectHandleInvalid, p11.KeyHandleInvalid)

# The token refused the PIN: never retried behind the operator's back.
_PIN_REFUSED: tuple[type[Exception], ...] = (p11.PinIncorrect, p11.PinLocked, p11.PinExpired)
_FIND_ATTEMPTS = 5  # looks for the token by label before it counts as gone

_ED25519_OID = "1.3.101.112"
# An object still missing after a re-open is not re-opened for again for this long (per
# object id), so requests naming a missing key cannot keep re-initialising the module;
# an object not yet known to be missing (a key just made by another worker) never waits.
_MISSING_KEY_REOPEN_INTERVAL = 5.0  # seconds


@dataclass(frozen=True)
class TokenSettings:
    """Where the token is and how to log in. The PIN never comes from the config file."""

    module: str
    label: str
    pin: str
    serial: str | None = None
    probe_interval: float = 2.0  # seconds between liveness probes; 0 disables
    max_backoff: float = 5.0
    hang_seconds: float = 5.0  # a token call running longer is a hung token; 0 disables


@dataclass(frozen=True)
class TokenObject:
    """A key object found on the token (for the start-up consistency check)."""

    object_id: str
    label: str
    object_class: str  # "private" or "public"


class SignItem(NamedTuple):  # a tuple: made per item, 4x cheaper than a frozen dataclass
    object_id: str
    algorithm: Algorithm
    data: bytes  # what the mechanism signs: a digest, or the message for EdDSA


class KeyObjectMissing(ServiceError):
    """The registry names a key whose private object is not on the token."""

    status = FailedPrecondition.status


class Token:
    """A logged-in session on one token, safe to share between threads."""

    def __init__(self, settings: TokenSettings, metrics: Observer = NO_METRICS) -> None:
        self.settings = settings
        self.metrics = metrics  # token state, heal attempts
        self._lock = threading.RLock()
        self._lib: Any = None
        self._session: Any = None
        self._handles: dict[str, Any] = {}
        self._fault: str | None = "not opened"
        self._listeners: list[Callable[[bool], None]] = []
        self._healer: threading.Thread | None = None
        self._closed = threading.Event()
        self._prober: threading.Thread | None = None
        self._missing: dict[str, float] = {}  # object id -> when a re-open did not find it
        self._pin_refused: str | None = None  # why the token refused the PIN (no retries)
        self.login_attempts = 0  # C_Login calls made, for tests and diagnostics
        self._busy_since: float | None = None  # when the running token call started
        self._hung = False  # the watchdog found the running call hung
        self._watchdog: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def open(self) -> None:
        """Open and log in; raise TokenUnavailable if the token cannot be used now."""
        with self._lock:
            try:
                self._reopen()
            except (p11.PKCS11Error, OSError) as exc:
                raise TokenUnavailable(
                    f"cannot open token {self.settings.label!r}: {_describe(exc)}"
                ) from exc
        if self.settings.probe_interval > 0 and self._prober is None:
            self._prober = threading.Thread(
                target=self._probe_loop, name="token-probe", daemon=True
            )
            self._prober.start()
        if self.settings.hang_seconds > 0 and self._watchdog is None:
            self._watchdog = threading.Thread(
                target=self._watch, name="token-watchdog", daemon=True
            )
            self._watchdog.start()

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            self._handles.clear()
            if self._session is not None:
                with contextlib.suppress(p11.PKCS11Error):
                    self._session.close()
                self._session = None
            self._fault = "closed"

    @property
    def healthy(self) -> bool:
        return self._fault is None

    @property
    def fault(self) -> str | None:
        return self._fault

    def on_health_change(self, listener: Callable[[bool], None]) -> None:
        self._listeners.append(listener)

    @property
    def pin_refused(self) -> str | None:
        """Why the token refused the PIN, while the daemon does not try it again."""
        return self._pin_refused

    def reset_lockout(self, read_pin: Callable[[], str] | None = None) -> None:
        """SIGHUP: re-read the PIN (``read_pin``) and, if the token refused the last one,
        let the healer try once more. A PIN that cannot be read keeps the lockout: trying
        the old one again would only bring a real HSM closer to locking it."""
        pin: str | None = None
        if read_pin is not None:
            try:
                pin = read_pin()
            except Exception as exc:  # ConfigError, OSError: keep what we have
                log.error("token %r: cannot re-read the PIN: %s", self.settings.label, exc)
                return
        with self._lock:
            if pin:
                self.settings = replace(self.settings, pin=pin)
            if self._pin_refused is None:
                return
            self._pin_refused = None
            if self._closed.is_set() or self._fault is None:
                return
            log.warning("token %r: reload, trying the PIN again", self.settings.label)
            self._start_healer()

    # -- key operations --------------------------------------------------------------------

    def generate(self, algorithm: Algorithm, label: str) -> tuple[str, PublicKeyTypes]:
        """Generate a key pair inside the token; returns (object id, public key).

        The pair is generated as session objects of this session and then copied, inside
        the token, to token objects (``C_CopyObject`` with ``CKA_TOKEN`` true); the session
        objects are destroyed. The private key never leaves the module and keeps what
        generation gave it (``CKA_LOCAL``, ``CKA_ALWAYS_SENSITIVE``,
        ``CKA_NEVER_EXTRACTABLE``). Why not generate token objects at once: SoftHSM's file
        object store writes a new token object's file again for every default attribute
        it sets (~30 truncate-and-rewrites per object, each waiting on ext4's writeback
        of the previous one: ~10 ms per P-256 pair), while a copy is written in one
        transaction (~1.4 ms per pair).
        """
        object_id = os.urandom(16)
        private_template = {
            Attribute.TOKEN: False,  # a session object first; made a token object below
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.SIGN: True,
            Attribute.DECRYPT: False,
            Attribute.UNWRAP: False,
            Attribute.DERIVE: False,
        }
        public_template = {
            Attribute.TOKEN: False,
            Attribute.PRIVATE: False,
            Attribute.VERIFY: True,
        }
        if algorithm.family == "rsa":
            public_template[Attribute.ENCRYPT] = False
            public_template[Attribute.WRAP] = False

        def run() -> tuple[str, PublicKeyTypes]:
            session = self._session
            if algorithm.family == "rsa":
                pub, priv = session.generate_keypair(
                    KeyType.RSA,
                    algorithm.rsa_bits,
                    store=False,
                    label=label,
                    id=object_id,
                    public_template=public_template,
                    private_template=private_template,
                )
            else:
                curve = _ED25519_OID if algorithm.family == "ed25519" else str(algorithm.curve)
                key_type = KeyType.EC_EDWARDS if algorithm.family == "ed25519" else KeyType.EC
                mechanism = (
                    Mechanism.EC_EDWARDS_KEY_PAIR_GEN
                    if algorithm.family == "ed25519"
                    else Mechanism.EC_KEY_PAIR_GEN
                )
                params = session.create_domain_parameters(
                    key_type,
                    {Attribute.EC_PARAMS: encode_named_curve_parameters(curve)},
                    local=True,
                )
                pub, priv = params.generate_keypair(
                    store=False,
                    label=label,
                    id=object_id,
                    mechanism=mechanism,
                    public_template=public_template,
                    private_template=private_template,
                )
            try:
                public = _public_key(algorithm, pub)
                # The public object first: if the private copy fails, no private key is
                # left on the token (a stray public object holds nothing secret).
                token_pub = pub.copy({Attribute.TOKEN: True})
                try:
                    token_priv = priv.copy({Attribute.TOKEN: True})
                except BaseException:
                    with contextlib.suppress(p11.PKCS11Error):
                        token_pub.destroy()
                    raise
            finally:
                for obj in (priv, pub):  # session objects: gone with the session anyway
                    with contextlib.suppress(p11.PKCS11Error):
                        obj.destroy()
            # The handle the copy returns is used as it is: no search.
            log.debug("token %r: generated key object %s", self.settings.label, object_id.hex())
            self._handles[object_id.hex()] = token_priv
            return object_id.hex(), public

        return self._call(run)

    def sign(self, object_id: str, algorithm: Algorithm, data: bytes) -> bytes:
        """Raw token signature (ECDSA: r||s) over ``data`` (a digest, or the EdDSA message)."""
        item = SignItem(object_id, algorithm, data)
        return self._call(lambda: self._sign_one(item))

    def sign_many(self, items: Sequence[SignItem]) -> list[bytes | Exception]:
        """Sign several items under one lock acquisition. Per-item errors are returned."""

        def run() -> list[bytes | Exception]:
            out: list[bytes | Exception] = []
            for item in items:
                try:  # a missing object was looked for again (``_locate``) before this
                    out.append(self._sign_one(item))
                except (KeyObjectMissing, InvalidArgument) as exc:
                    out.append(exc)
            return out

        return self._call(run)

    def public_key(self, object_id: str, algorithm: Algorithm) -> PublicKeyTypes:
        def run() -> PublicKeyTypes:
            pub = self._locate(object_id, ObjectClass.PUBLIC_KEY)
            if pub is None:
                raise KeyObjectMissing(f"public key object {object_id} is not on the token")
            return _public_key(algorithm, pub)

        return self._call(run)

    def destroy(self, object_id: str) -> int:
        """Remove every object with this id from the token; returns how many were removed."""

        def run() -> int:
            self._handles.pop(object_id, None)
            objs = self._all_with_id(object_id)
            if not objs and self._may_reopen_for(object_id):
                # made by another worker and not visible here yet: look again, re-opened
                self._reopen()
                objs = self._all_with_id(object_id)
            for obj in objs:
                obj.destroy()
            self._missing.pop(object_id, None)
            return len(objs)

        return self._call(run)

    def security_attributes(self, object_id: str) -> dict[str, bool]:
        """The private key's protection attributes, read back from the token."""

        def run() -> dict[str, bool]:
            priv = self._locate(object_id, ObjectClass.PRIVATE_KEY)
            if priv is None:
                raise KeyObjectMissing(f"private key object {object_id} is not on the token")
            names = {
                "sensitive": Attribute.SENSITIVE,
                "extractable": Attribute.EXTRACTABLE,
                "private": Attribute.PRIVATE,
                "token": Attribute.TOKEN,
                "always_sensitive": Attribute.ALWAYS_SENSITIVE,
                "never_extractable": Attribute.NEVER_EXTRACTABLE,
                "local": Attribute.LOCAL,
            }
            return {name: bool(priv[attr]) for name, attr in names.items()}

        return self._call(run)

    def objects(self) -> list[TokenObject]:
        """Every key object on the token, for comparing with the registry."""

        def run() -> list[TokenObject]:
            found = []
            for cls, name in (
                (ObjectClass.PRIVATE_KEY, "private"),
                (ObjectClass.PUBLIC_KEY, "public"),
            ):
                for obj in self._session.get_objects({Attribute.CLASS: cls}):
                    found.append(
                        TokenObject(bytes(obj[Attribute.ID]).hex(), str(obj[Attribute.LABEL]), name)
                    )
            return found

        return self._call(run)

    # -- internals -------------------------------------------------------------------------

    def _sign_one(self, item: SignItem) -> bytes:
        cached = item.object_id in self._handles
        try:
            return self._sign_with(self._private(item.object_id), item)
        except _STALE_HANDLE:
            if not cached:
                raise  # a handle just found: a real fault, healed by ``_call``
            # The object behind the cached handle is gone (destroyed, or the token was
            # replaced): forget the handle and look for the object again.
            self._handles.pop(item.object_id, None)
            return self._sign_with(self._private(item.object_id), item)

    def _sign_with(self, key: Any, item: SignItem) -> bytes:
        alg = item.algorithm
        try:
            if alg.family == "ec":
                return bytes(key.sign(item.data, mechanism=Mechanism.ECDSA))
            if alg.family == "ed25519":
                return bytes(key.sign(item.data, mechanism=Mechanism.EDDSA))
            return bytes(
                key.sign(
                    item.data,
                    mechanism=Mechanism.RSA_PKCS_PSS,
                    mechanism_param=(Mechanism.SHA256, pkcs11.MGF.SHA256, alg.digest_size),
                )
            )
        except (p11.DataLenRange, p11.DataInvalid) as exc:
            raise InvalidArgument(
                f"the token rejected the data for {alg.name}: {_describe(exc)}"
            ) from exc

    def _private(self, object_id: str) -> Any:
        key = self._handles.get(object_id)
        if key is None:
            key = self._locate(object_id, ObjectClass.PRIVATE_KEY)
            if key is None:
                raise KeyObjectMissing(f"private key object {object_id} is not on the token")
            self._handles[object_id] = key
        return key

    def _locate(self, object_id: str, cls: ObjectClass) -> Any | None:
        """Find an object; if it is not there, look again before saying it is missing.

        The first search runs in the current session and sees what other processes have
        written since the last one. If the object is still not found, the module is
        re-initialised and logged in again and the object looked for once more: SoftHSM
        keeps one index per module instance, and an object another process was writing
        while this one indexed can stay invisible to it. Only an object that a re-open
        already failed to find is reported missing at once (for a few seconds), so a key
        just made by another worker never waits, and requests naming a truly missing key
        do not re-initialise the module each time.
        """
        obj = self._find(object_id, cls)
        if obj is not None or not self._may_reopen_for(object_id):
            return obj
        log.info(
            "token %r: object %s not found; re-opening to look again",
            self.settings.label,
            object_id,
        )
        self._reopen()
        obj = self._find(object_id, cls)
        if obj is None:
            self._missing[object_id] = time.monotonic()
        return obj

    def _may_reopen_for(self, object_id: str) -> bool:
        last = self._missing.get(object_id)
        if last is None or time.monotonic() - last >= _MISSING_KEY_REOPEN_INTERVAL:
            self._missing.pop(object_id, None)
            return True
        return False

    def _find(self, object_id: str, cls: ObjectClass) -> Any | None:
        objs = list(
            self._session.get_objects(
                {Attribute.CLASS: cls, Attribute.ID: bytes.fromhex(object_id)}
            )
        )
        if objs:
            log.debug("token %r: found %s object %s", self.settings.label, cls.name, object_id)
        return objs[0] if objs else None

    def _all_with_id(self, object_id: str) -> list[Any]:
        return list(self._session.get_objects({Attribute.ID: bytes.fromhex(object_id)}))

    def _call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the session under the lock; on a token fault, heal once and retry.

        A stale handle after the token came back is the common case and heals in place;
        if the retry fails too, the token is marked broken and the healer takes over.
        """
        with self._lock:
            if self._fault is not None:
                raise TokenUnavailable(
                    f"token {self.settings.label!r} is unavailable: {self._fault}"
                )
            # A missing object was already looked for again inside ``fn`` (``_locate``).
            try:
                return self._timed(fn)
            except _FAULTS as exc:
                first: BaseException = exc
            except TokenUnavailable as exc:  # a re-open inside ``fn`` was refused a login
                self._mark_broken(exc)
                raise TokenUnavailable(
                    f"token {self.settings.label!r} is unavailable: {self._fault}"
                ) from exc
            try:
                self._reopen()
                return fn()
            except _REOPEN_FAILURES as exc:  # incl. a refused login
                self._mark_broken(exc if isinstance(exc, TokenUnavailable) else first)
                raise TokenUnavailable(
                    f"token {self.settings.label!r} is unavailable: {self._fault}"
                ) from exc

    def _timed(self, fn: Callable[[], T]) -> T:
        """Run a token call where the watchdog can see how long it has been running."""
        self._busy_since = time.monotonic()
        try:
            return fn()
        finally:
            self._busy_since = None
            if self._hung:  # it came back, late: reopen the session before trusting it
                self._hung = False
                self._mark_broken(TokenUnavailable("a token call hung"))

    def _watch(self) -> None:
        """Flag a token call that runs past ``hang_seconds`` (the caller holds the lock,
        so this thread never takes it): health NOT_SERVING, and the session is reopened
        once the call returns."""
        limit = self.settings.hang_seconds
        while not self._closed.wait(min(1.0, limit / 2)):
            started = self._busy_since
            if started is None or self._hung:
                continue
            running = time.monotonic() - started
            if running > limit:
                self._hung = True
                log.error(
                    "token %r: a call has been running for %.1f s (limit %.1f s): the token "
                    "is hung; marking it broken",
                    self.settings.label,
                    running,
                    limit,
                )
                self._set_health(f"a token call hung for more than {limit:g} s")

    def _reopen(self) -> None:
        """(Re-)initialise the module, find the token by label, open a session, log in."""
        if self._pin_refused is not None:  # never try a refused PIN again by ourselves
            raise TokenUnavailable(self._pin_refused)
        self._handles.clear()
        if self._session is not None:
            with contextlib.suppress(p11.PKCS11Error):
                self._session.close()
            self._session = None
        if self._lib is None:
            self._lib = pkcs11.lib(self.settings.module)
        else:
            try:
                self._lib.reinitialize()
            except p11.PKCS11Error:
                self._lib.initialize()
        kwargs: dict[str, str] = {"token_label": self.settings.label}
        if self.settings.serial:
            kwargs["token_serial"] = self.settings.serial
        token = self._find_token(kwargs)
        self.login_attempts += 1
        try:
            self._session = token.open(rw=True, user_pin=self.settings.pin)
        except _PIN_REFUSED as exc:
            self._pin_refused = (
                f"token {self.settings.label!r} refused the PIN ({_describe(exc)}); not "
                "trying it again until SIGHUP or a restart (a real HSM locks the PIN "
                "after a few wrong tries): fix the PIN, then send SIGHUP"
            )
            log.error("%s", self._pin_refused)
            raise TokenUnavailable(self._pin_refused) from exc
        self._missing.clear()
        self._set_health(None)

    def _find_token(self, kwargs: dict[str, str]) -> Any:
        """The token by label. SoftHSM rescans its token directory on C_Initialize; while
        another process (a second worker creating a key) rewrites the token's files, the
        token can be missing from that scan for a moment: look again before giving up."""
        assert self._lib is not None
        for attempt in range(_FIND_ATTEMPTS):
            try:
                return self._lib.get_token(**kwargs)
            except p11.NoSuchToken:
                if attempt == _FIND_ATTEMPTS - 1:
                    raise
            time.sleep(0.02)
            with contextlib.suppress(p11.PKCS11Error):
                self._lib.reinitialize()
        raise AssertionError("unreachable")

    def _mark_broken(self, exc: BaseException) -> None:
        self._session = None
        self._handles.clear()
        self._set_health(_describe(exc))
        if self._pin_refused is not None:
            log.error("token %r fault: %s", self.settings.label, self._fault)
            return  # no healer: only SIGHUP (reset_lockout) or a restart tries the PIN
        log.error("token %r fault: %s; healing in background", self.settings.label, self._fault)
        self._start_healer()

    def _start_healer(self) -> None:
        if self._healer is None or not self._healer.is_alive():
            self._healer = threading.Thread(target=self._heal, name="token-healer", daemon=True)
            self._healer.start()

    def _heal(self) -> None:
        delay = 0.05
        while not self._closed.is_set():
            time.sleep(delay)
            with self._lock:
                if self._fault is None:
                    return
                try:
                    self._reopen()
                    self.metrics.heal_attempt(True)
                    log.warning("token %r is back", self.settings.label)
                    return
                except Exception as exc:  # keep trying whatever the module says...
                    self.metrics.heal_attempt(False)
                    self._fault = _describe(exc)
                if self._pin_refused is not None:  # ...except a refused PIN
                    log.error("token %r: healing stopped: the PIN was refused", self.settings.label)
                    return
            delay = min(delay * 2, self.settings.max_backoff)

    def _probe_loop(self) -> None:
        """Notice a vanished token while idle, so health reports it before a request fails."""
        while not self._closed.wait(self.settings.probe_interval):
            with self._lock:
                if self._fault is not None or self._session is None:
                    continue
                try:
                    kwargs = {"token_label": self.settings.label}
                    self._lib.get_token(**kwargs)
                except _ANY_P11 as exc:
                    self._mark_broken(exc)

    def _set_health(self, fault: str | None) -> None:
        was_healthy = self._fault is None
        self._fault = fault
        if was_healthy != (fault is None):
            self.metrics.token_state(fault is None)
            for listener in self._listeners:
                try:
                    listener(fault is None)
                except Exception:  # a listener must not break the token
                    log.exception("token health listener failed")


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _octets(value: bytes, raw_length: int) -> bytes:
    """EC_POINT is a DER OCTET STRING; some modules return the bare point."""
    value = bytes(value)
    if len(value) == raw_length:
        return value
    return bytes(OctetString.load(value).native)


def _public_key(algorithm: Algorithm, pub: Any) -> PublicKeyTypes:
    if algorithm.family == "rsa":
        n = int.from_bytes(bytes(pub[Attribute.MODULUS]), "big")
        e = int.from_bytes(bytes(pub[Attribute.PUBLIC_EXPONENT]), "big")
        return rsa.RSAPublicNumbers(e, n).public_key()
    if algorithm.family == "ed25519":
        return ed25519.Ed25519PublicKey.from_public_bytes(_octets(pub[Attribute.EC_POINT], 32))
    curve: ec.EllipticCurve = ec.SECP256R1() if algorithm.curve == "secp256r1" else ec.SECP384R1()
    point = _octets(pub[Attribute.EC_POINT], 1 + 2 * ((curve.key_size + 7) // 8))
    return ec.EllipticCurvePublicKey.from_encoded_point(curve, point)
