"""[log] format = "json": every line is JSON; one line per request, never a payload or PIN."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from harness import PIN, running_daemon
from signer_client.errors import NotFoundError

SECRET_PAYLOAD = b"not-tuf payload 5ec7e7"


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_json_lines_one_per_request(tmp_path: Path) -> None:
    with running_daemon(tmp_path, clients=["admin"], extra_config='[log]\nformat = "json"\n') as d:
        client = d.client()
        key = client.create_key("logged", role="targets")
        client.sign(key.key_id, SECRET_PAYLOAD)
        with pytest.raises(NotFoundError):
            client.get_key("0" * 64)
        time.sleep(0.3)
        text = d.log()
    lines = json_lines(text)  # every line parses: startup lines are JSON too
    assert any(line.get("message", "").startswith("listening on") for line in lines)
    requests = [line for line in lines if "rpc" in line]
    by_rpc = {line["rpc"]: line for line in requests}
    assert set(by_rpc) >= {"CreateKey", "Sign", "GetKey"}
    sign = by_rpc["Sign"]
    assert sign["principal"] == "admin" and sign["key_id"] == key.key_id
    assert sign["outcome"] == "allowed" and sign["code"] == "OK"
    assert isinstance(sign["latency_ms"], float) and sign["latency_ms"] >= 0
    assert len(str(sign["request_id"])) == 16
    missing = by_rpc["GetKey"]
    assert missing["code"] == "NOT_FOUND" and missing["outcome"] == "failed"
    assert SECRET_PAYLOAD.decode() not in text and PIN not in text


def test_text_stays_the_default_without_request_lines(tmp_path: Path) -> None:
    with running_daemon(tmp_path, clients=["admin"]) as d:
        client = d.client()
        key = client.create_key("quiet", role="targets")
        client.sign(key.key_id, SECRET_PAYLOAD)
        time.sleep(0.3)
        text = d.log()
    assert "listening on" in text
    assert not any(line.startswith("{") for line in text.splitlines())
    assert "Sign allowed OK" not in text


def test_request_lines_in_text_when_asked(tmp_path: Path) -> None:
    config = "[log]\nrequests = true\n"
    with running_daemon(tmp_path, clients=["admin"], extra_config=config) as d:
        client = d.client()
        key = client.create_key("text", role="targets")
        client.sign(key.key_id, SECRET_PAYLOAD)
        time.sleep(0.3)
        text = d.log()
    assert "signer.requests: Sign allowed OK admin" in text


def test_a_request_line_names_the_outcome_as_the_audit_log_does(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """allowed / denied / failed, with a rate limit counted as denied (as in the audit log
    and the metrics), whatever the transport's status name."""
    import logging

    from signer.logs import REQUESTS, log_request

    with caplog.at_level(logging.INFO, logger=REQUESTS.name):
        for code in (
            "OK",
            "PERMISSION_DENIED",
            "UNAUTHENTICATED",
            "RESOURCE_EXHAUSTED",
            "NOT_FOUND",
            "UNAVAILABLE",
        ):
            log_request("r", "p", "Sign", "k", code, time.perf_counter())
    outcomes = [record.__dict__["outcome"] for record in caplog.records]
    assert outcomes == ["allowed", "denied", "denied", "denied", "failed", "failed"]
