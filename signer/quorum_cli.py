"""``signerd request create|approve|show|sign``: the quorum ceremony from a terminal.

Each step is an ordinary mTLS client of the daemon, run by a different person with their
own client certificate: the requester creates the request, M approvers inspect it
(``show``) and approve the payload hash they saw, then the requester signs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from signer.cli import COMMANDS, PARSER_EXTENSIONS, _client, client_args


def _show_request(request: Any, with_payload: bool = False) -> None:
    from signer_api.v1 import signer_pb2 as pb

    info: dict[str, Any] = {
        "request_id": request.request_id,
        "key_id": request.key_id,
        "state": pb.SignatureRequestState.Name(request.state)
        .removeprefix("SIGNATURE_REQUEST_STATE_")
        .lower(),
        "payload_sha256": request.payload_sha256,
        "requester": request.requester,
        "approvers": list(request.approvers),
        "approvals_required": request.approvals_required,
        "reason": request.reason,
        "expires_at": dt.datetime.fromtimestamp(request.expires_at.seconds, dt.UTC).isoformat(),
    }
    summary = _tuf_summary(request.payload)
    if summary:
        info["payload_summary"] = summary
    if with_payload:
        info["payload"] = request.payload.decode(errors="replace")
    print(json.dumps(info, indent=2))


def _tuf_summary(payload: bytes) -> dict[str, Any] | None:
    try:
        parsed = json.loads(payload, strict=False)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(parsed, dict):
        return None
    return {k: parsed[k] for k in ("_type", "version", "expires") if k in parsed}


def _create(args: argparse.Namespace) -> int:
    payload = Path(args.payload_file).read_bytes()
    with _client(args) as client:
        _show_request(client.request_signature(args.key_id, payload, args.reason or ""))
    return 0


def _approve(args: argparse.Namespace) -> int:
    digest = args.payload_sha256
    if args.payload_file:
        digest = hashlib.sha256(Path(args.payload_file).read_bytes()).hexdigest()
    if not digest:
        print("approve needs --payload-sha256 or --payload-file", file=sys.stderr)
        return 2
    with _client(args) as client:
        _show_request(client.approve(args.request_id, digest))
    return 0


def _show(args: argparse.Namespace) -> int:
    with _client(args) as client:
        request = client.get_signature_request(args.request_id)
    if args.payload_out:
        Path(args.payload_out).write_bytes(request.payload)
    _show_request(request, args.payload)
    return 0


def _sign(args: argparse.Namespace) -> int:
    """Fulfil an approved request: sign the approved payload, print a TUF signature."""
    with _client(args) as client:
        request = client.get_signature_request(args.request_id)
        signed = client.sign(request.key_id, request.payload, request_id=request.request_id)
    signature = {"keyid": signed.key_id, "sig": signed.signature.hex()}
    text = json.dumps(signature)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


def _extend(sub: Any) -> None:
    request = sub.add_parser("request", help="quorum signing: request, approve, show, sign")
    request_sub = request.add_subparsers(dest="request_command", required=True)

    create = client_args(request_sub.add_parser("create", help="ask for a quorum signature"))
    create.add_argument("--key-id", required=True)
    create.add_argument("--payload-file", required=True, help="the exact bytes to sign")
    create.add_argument("--reason", help="why; shown to approvers")
    approve = client_args(request_sub.add_parser("approve", help="approve a request"))
    approve.add_argument("request_id")
    digest = approve.add_mutually_exclusive_group(required=True)
    digest.add_argument("--payload-sha256", help="sha256 of the payload you reviewed")
    digest.add_argument("--payload-file", help="the payload you reviewed (hashed here)")
    show = client_args(request_sub.add_parser("show", help="show a request and its payload"))
    show.add_argument("request_id")
    show.add_argument("--payload", action="store_true", help="print the payload too")
    show.add_argument("--payload-out", help="write the payload to this file")
    sign = client_args(request_sub.add_parser("sign", help="sign an approved request"))
    sign.add_argument("request_id")
    sign.add_argument("--out", help="also write the signature JSON here")


PARSER_EXTENSIONS.append(_extend)
for _name, _fn in (("create", _create), ("approve", _approve), ("show", _show), ("sign", _sign)):
    COMMANDS[f"request {_name}"] = _fn
