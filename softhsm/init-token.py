#!/usr/bin/env python3
"""Initialise a PKCS#11 token by label with PINs read from the environment, never argv.

    SIGNER_PIN=... SIGNER_SO_PIN=... init-token.py MODULE LABEL

``softhsm2-util --init-token`` takes the PINs as --pin/--so-pin (visible to every local
user in /proc/PID/cmdline) or prompts on a terminal only, and python-pkcs11 has no
C_InitToken: so this calls the module through ctypes. Idempotent: a token already
carrying LABEL is left alone; otherwise the first uninitialised token is initialised
(C_InitToken with the SO PIN, then C_Login as SO and C_InitPIN with the user PIN).
Prints "exists" or "created".
"""

from __future__ import annotations

import ctypes
import os
import sys

CKR_OK = 0
CKF_RW_SESSION = 0x2
CKF_SERIAL_SESSION = 0x4
CKF_TOKEN_INITIALIZED = 0x400
CKU_SO = 0
ULONG = ctypes.c_ulong


class Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_ubyte), ("minor", ctypes.c_ubyte)]


class TokenInfo(ctypes.Structure):
    """CK_TOKEN_INFO (PKCS#11 2.40, default packing on Unix)."""

    _fields_ = [
        ("label", ctypes.c_char * 32),
        ("manufacturerID", ctypes.c_char * 32),
        ("model", ctypes.c_char * 16),
        ("serialNumber", ctypes.c_char * 16),
        ("flags", ULONG),
        *[
            (name, ULONG)
            for name in (
                "ulMaxSessionCount",
                "ulSessionCount",
                "ulMaxRwSessionCount",
                "ulRwSessionCount",
                "ulMaxPinLen",
                "ulMinPinLen",
                "ulTotalPublicMemory",
                "ulFreePublicMemory",
                "ulTotalPrivateMemory",
                "ulFreePrivateMemory",
            )
        ],
        ("hardwareVersion", Version),
        ("firmwareVersion", Version),
        ("utcTime", ctypes.c_char * 16),
    ]


class Module:
    """The few PKCS#11 calls needed, each checked: any CKR other than OK is fatal."""

    def __init__(self, path: str) -> None:
        self.lib = ctypes.CDLL(path)

    def call(self, name: str, *args: object) -> None:
        rv = getattr(self.lib, name)(*args)
        if rv != CKR_OK:
            raise SystemExit(f"init-token: {name} failed: CKR 0x{rv:08x}")

    def slots(self) -> list[int]:
        count = ULONG(0)
        self.call("C_GetSlotList", ctypes.c_ubyte(1), None, ctypes.byref(count))
        ids = (ULONG * max(1, count.value))()
        self.call("C_GetSlotList", ctypes.c_ubyte(1), ids, ctypes.byref(count))
        return [int(ids[i]) for i in range(count.value)]

    def token_info(self, slot: int) -> TokenInfo:
        info = TokenInfo()
        self.call("C_GetTokenInfo", ULONG(slot), ctypes.byref(info))
        return info


def padded_label(label: str) -> bytes:
    raw = label.encode()
    if len(raw) > 32:
        raise SystemExit(f"init-token: label {label!r} is longer than 32 bytes")
    return raw.ljust(32, b" ")


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(
            "usage: init-token.py MODULE LABEL (PINs in SIGNER_PIN, SIGNER_SO_PIN)", file=sys.stderr
        )
        return 2
    module_path, label = argv[1], argv[2]
    pin = os.environ.get("SIGNER_PIN", "").encode()
    so_pin = os.environ.get("SIGNER_SO_PIN", "").encode()
    if not pin or not so_pin:
        print("init-token: set SIGNER_PIN and SIGNER_SO_PIN", file=sys.stderr)
        return 2
    want = padded_label(label)
    p11 = Module(module_path)
    p11.call("C_Initialize", None)
    try:
        free = None
        for slot in p11.slots():
            info = p11.token_info(slot)
            if info.flags & CKF_TOKEN_INITIALIZED:
                if bytes(info.label).ljust(32, b" ") == want:
                    print("exists")
                    return 0
            elif free is None:
                free = slot
        if free is None:
            print("init-token: no free token slot", file=sys.stderr)
            return 1
        p11.call("C_InitToken", ULONG(free), so_pin, ULONG(len(so_pin)), want)
        session = ULONG(0)
        flags = ULONG(CKF_SERIAL_SESSION | CKF_RW_SESSION)
        p11.call("C_OpenSession", ULONG(free), flags, None, None, ctypes.byref(session))
        p11.call("C_Login", session, ULONG(CKU_SO), so_pin, ULONG(len(so_pin)))
        p11.call("C_InitPIN", session, pin, ULONG(len(pin)))
        p11.call("C_Logout", session)
        p11.call("C_CloseSession", session)
        print("created")
        return 0
    finally:
        p11.lib.C_Finalize(None)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
