"""Prometheus metrics ([metrics]): scraped over HTTP from a real daemon, parsed as
Prometheus parses them, and counted exactly, summed across two worker processes."""

from __future__ import annotations

import re
import socket
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from authz_helpers import tuf_payload
from prometheus_client.parser import text_string_to_metric_families

from harness import (
    Daemon,
    create_token,
    free_port,
    pull_token,
    reinsert_token,
    running_daemon,
)
from signer.config import load_config
from signer.errors import ConfigError
from signer_client import ClientError

ECDSA = "ecdsa-sha2-nistp256"
STATES = ("active", "retired", "destroyed")
POLICY = """
[[rules]]
principals = ["admin"]
operations = ["create", "read", "retire", "sign", "sign-raw"]

[[rules]]
principals = ["alice"]
operations = ["read"]

[[rules]]
principals = ["ci"]
operations = ["sign-raw", "read"]

[rate_limits]
ci = { rate = 0.001, burst = 1 }

[quorum]
approvals = 2
window_seconds = 3600
"""

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> tuple[str, Samples]:
    """The exposition text and its samples: (name, labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            samples[key] = samples.get(key, 0.0) + sample.value
    return text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def matching(samples: Samples, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return [
        (dict(found), v) for (n, found), v in samples.items() if n == name and want <= set(found)
    ]


def settled(port: int) -> tuple[str, Samples]:
    """A scrape once the workers handed over what they recorded (every 0.2 s here:
    refresh_seconds; at least every second)."""
    time.sleep(1.0)
    return scrape(port)


def eventually(port: int, check: Callable[[Samples], bool], timeout: float = 15.0) -> Samples:
    """Scrape until ``check`` holds (values sampled on a timer, a token being healed)."""
    deadline = time.monotonic() + timeout
    while True:
        _, samples = scrape(port)
        if check(samples):
            return samples
        if time.monotonic() > deadline:
            raise AssertionError(f"metrics never matched; last scrape:\n{samples}")
        time.sleep(0.2)


def metrics_config(port: int, *extra: str) -> str:
    lines = "\n".join(extra)
    return f'[metrics]\nlisten = "127.0.0.1:{port}"\nrefresh_seconds = 0.2\n\n{lines}\n'


def refused(call: Callable[[], Any], code: grpc.StatusCode) -> None:
    with pytest.raises(ClientError) as info:
        call()
    assert info.value.code == code, info.value


# -- two workers ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, int]]:
    port = free_port()
    with running_daemon(
        tmp_path_factory.mktemp("metrics"),
        policy=POLICY,
        clients=["admin", "alice", "ci"],
        workers=2,
        extra_config=metrics_config(port, "[log]", "requests = true"),
    ) as daemon:
        yield daemon, port


def signing_workers(daemon: Daemon) -> set[str]:
    """The workers whose request lines show a signature made ([log] requests)."""
    lines = [line for line in daemon.log().splitlines() if "signer.requests: Sign allowed" in line]
    return {m.group(1) for line in lines if (m := re.search(r" worker (\d) ", line))}


def test_counts_summed_across_workers(served: tuple[Daemon, int]) -> None:
    daemon, port = served
    with daemon.client("admin") as admin:
        key = admin.create_key("metrics-ecdsa", ECDSA, "targets")
        admin.create_key("metrics-ed25519", "ed25519", "snapshot")
        retired = admin.create_key("metrics-retired", ECDSA, "targets")
        admin.retire_key(retired.key_id)
        root = admin.create_key("metrics-root", ECDSA, "root", quorum=True)
        admin.request_signature(root.key_id, tuf_payload("root", 1), "rotation")
        batch = admin.sign_batch(key.key_id, [b"one", b"two", b"three"])
        assert [r.error for r in batch] == [None, None, None]
    # Unary signs, each on a connection of its own (either worker), until both signed.
    signs = 0
    while signs < 8 or (signing_workers(daemon) != {"0", "1"} and signs < 100):
        with daemon.client("admin") as admin:
            admin.sign_digest(key.key_id, signs.to_bytes(32))
        signs += 1
    with daemon.client("alice") as alice:
        for _ in range(2):
            refused(
                lambda: alice.sign_digest(key.key_id, b"\1" * 32),
                grpc.StatusCode.PERMISSION_DENIED,
            )
    with daemon.client("ci") as ci:
        ci.sign_digest(key.key_id, b"\2" * 32)  # the burst of 1
        refused(lambda: ci.sign_digest(key.key_id, b"\3" * 32), grpc.StatusCode.RESOURCE_EXHAUSTED)
        refused(lambda: ci.sign_batch(key.key_id, [b"a", b"b"]), grpc.StatusCode.RESOURCE_EXHAUSTED)

    with daemon.client("admin") as admin:
        listed_before = {state: len(admin.list_keys(state=state)) for state in STATES}

    assert signing_workers(daemon) == {"0", "1"}

    text, s = settled(port)
    requests = "signer_requests_total"
    sign = "Signing.Sign"
    assert value(s, requests, rpc=sign, outcome="allowed", code="OK") == signs + 1
    assert value(s, requests, rpc=sign, outcome="denied", code="PERMISSION_DENIED") == 2
    assert value(s, requests, rpc=sign, outcome="denied", code="RESOURCE_EXHAUSTED") == 1
    assert value(s, requests, rpc="Signing.SignBatch", outcome="allowed", code="OK") == 1
    batch_refused = value(
        s, requests, rpc="Signing.SignBatch", outcome="denied", code="RESOURCE_EXHAUSTED"
    )
    assert batch_refused == 1
    assert value(s, requests, rpc="Key.CreateKey", outcome="allowed", code="OK") == 4
    assert value(s, requests, rpc="Key.RetireKey", outcome="allowed", code="OK") == 1
    assert value(s, requests, rpc="Signing.RequestSignature", outcome="allowed", code="OK") == 1

    # 8 unary + 1 (ci) + a batch of 3, all by the one ECDSA targets key.
    signatures = matching(s, "signer_signatures_total")
    assert signatures == [({"algorithm": ECDSA, "role": "targets"}, signs + 1 + 3)]
    assert value(s, "signer_rate_limited_total", reason="RATE_LIMITED") == 1
    assert value(s, "signer_rate_limited_total", reason="BATCH_OVER_BURST") == 1

    # The latency histogram: cumulative buckets ending in +Inf == count, a sum > 0.
    calls = signs + 1 + 2 + 1
    latency = "signer_request_duration_seconds"
    assert value(s, f"{latency}_count", rpc=sign) == calls
    assert 0 < value(s, f"{latency}_sum", rpc=sign) < calls * 5
    buckets = sorted(
        (float(labels["le"]), v) for labels, v in matching(s, f"{latency}_bucket", rpc=sign)
    )
    assert buckets[-1] == (float("inf"), calls)
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative
    assert len(buckets) == 15  # 14 bounds and +Inf
    assert "# TYPE signer_request_duration_seconds histogram" in text

    # Audit: every request above committed entries; nothing is waiting now.
    assert value(s, "signer_audit_commit_duration_seconds_count") >= calls
    assert value(s, "signer_audit_queue_depth") == 0

    # The token, per worker process: two live workers, both up; nothing healed.
    token = matching(s, "signer_token_up")
    assert len(token) == 2 and {labels["pid"] for labels, _ in token} != {""}
    assert [v for _, v in token] == [1.0, 1.0]
    assert value(s, "signer_token_heal_attempts_total", result="failed") == 0

    # Read from the shared state on a timer (refresh_seconds = 0.2). The registry also
    # holds the audit (checkpoint) key once the first checkpoint made it: ask the daemon.
    def counted(found: Samples) -> bool:
        with daemon.client("admin") as admin:
            listed = {state: len(admin.list_keys(state=state)) for state in STATES}
        keys = {labels["state"]: v for labels, v in matching(found, "signer_keys")}
        open_requests = {
            labels["state"]: v for labels, v in matching(found, "signer_quorum_requests_open")
        }
        return keys == listed and open_requests == {"pending": 1, "approved": 0}

    assert listed_before["retired"] == 1 and listed_before["active"] >= 3
    eventually(port, counted)

    # Still serving, and the counters go on from where they were.
    with daemon.client("admin") as admin:
        admin.sign_digest(key.key_id, b"\4" * 32)
    _, after = settled(port)
    assert value(after, requests, rpc=sign, outcome="allowed", code="OK") == signs + 2


def test_a_restarted_worker_keeps_the_totals_and_drops_its_gauges(
    served: tuple[Daemon, int],
) -> None:
    """SIGKILL one worker: the supervisor starts another; counters keep the dead one's
    counts, the token gauge forgets its pid."""
    import os
    import signal

    daemon, port = served
    _, before = settled(port)
    pids = {labels["pid"] for labels, _ in matching(before, "signer_token_up")}
    total = value(before, "signer_requests_total", rpc="Signing.Sign", outcome="allowed", code="OK")
    victim = sorted(pids)[0]
    os.kill(int(victim), signal.SIGKILL)

    def replaced(found: Samples) -> bool:
        now = {labels["pid"]: v for labels, v in matching(found, "signer_token_up")}
        return len(now) == 2 and victim not in now and all(v == 1 for v in now.values())

    after = eventually(port, replaced, timeout=30)
    assert (
        value(after, "signer_requests_total", rpc="Signing.Sign", outcome="allowed", code="OK")
        == total
    )
    daemon.wait_serving()


# -- one worker, no supervisor: the worker serves its own metrics -------------------------------


def test_single_worker_token_state_and_heal_attempts(tmp_path: Path) -> None:
    port = free_port()
    with running_daemon(tmp_path / "d", extra_config=metrics_config(port)) as daemon:
        with daemon.client() as client:
            key = client.create_key("heal", ECDSA, "timestamp")
            client.sign(key.key_id, b"before")
        _, s = settled(port)
        assert matching(s, "signer_token_up") == [({}, 1.0)]  # one process: no pid label
        assert value(s, "signer_requests_total", rpc="Key.CreateKey", outcome="allowed", code="OK")
        assert value(s, "signer_signatures_total", algorithm=ECDSA, role="timestamp") == 1

        away = pull_token(daemon)
        eventually(
            port,
            lambda found: (
                value(found, "signer_token_up") == 0
                and value(found, "signer_token_heal_attempts_total", result="failed") >= 1
            ),
        )
        reinsert_token(away)
        healed = eventually(port, lambda found: value(found, "signer_token_up") == 1, timeout=30)
        assert value(healed, "signer_token_heal_attempts_total", result="ok") == 1
        with daemon.client() as client:
            client.sign(key.key_id, b"after")


@pytest.mark.parametrize("workers", [1, 2])
def test_a_metrics_port_in_use_stops_the_daemon(tmp_path: Path, workers: int) -> None:
    """A configuration error (exit 2), named, whether the supervisor or the only
    worker binds it."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        daemon = Daemon(
            root=tmp_path,
            port=free_port(),
            env=create_token(tmp_path / "hsm"),
            workers=workers,
            extra_config=metrics_config(port),
        )
        daemon.start(wait=False)
        assert daemon.proc is not None
        assert daemon.proc.wait(60) == 2
    assert f"cannot listen on 127.0.0.1:{port} for metrics" in daemon.log()


def test_no_listener_without_the_setting(daemon: Daemon) -> None:
    """Metrics are off unless [metrics] listen is set: no HTTP port, no value files."""
    assert not (daemon.state / "metrics").exists()
    assert "metrics on http" not in daemon.log()


# -- the [metrics] section ---------------------------------------------------------------------


def _config(tmp_path: Path, metrics: str) -> Path:
    path = tmp_path / "signer.toml"
    path.write_text(
        '[tls]\nca = "ca.pem"\ncert = "c.pem"\nkey = "k.pem"\n\n'
        '[token]\nlabel = "t"\n\n'
        f"[metrics]\n{metrics}\n"
    )
    return path


@pytest.mark.parametrize(
    "listen", ["9464", "localhost", ":9464", "127.0.0.1:http", "127.0.0.1:0", "::1:9464", "h:70000"]
)
def test_a_bad_listen_value_is_a_config_error(tmp_path: Path, listen: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_config(tmp_path, f'listen = "{listen}"'))
    message = str(info.value)
    assert "[metrics] listen" in message and "host:port" in message and repr(listen) in message
    assert str(tmp_path / "signer.toml") in message


def test_metrics_settings(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path, 'listen = "[::1]:9464"\nrefresh_seconds = 1'))
    assert config.metrics.address == ("::1", 9464) and config.metrics.refresh_seconds == 1
    assert load_config(_config(tmp_path, "")).metrics.address is None  # off by default
    with pytest.raises(ConfigError, match="listen must be a string"):
        load_config(_config(tmp_path, "listen = 9464"))
    with pytest.raises(ConfigError, match=r"unknown setting metrics\.path"):
        load_config(_config(tmp_path, 'path = "/metrics"'))
    with pytest.raises(ConfigError, match="refresh_seconds must be a number > 0"):
        load_config(_config(tmp_path, "refresh_seconds = 0"))


# -- recording: added up in the worker, handed over to prometheus_client ------------------------


def test_handed_over_histograms_match_prometheus_observe() -> None:
    """The hand-over writes what observe() would have: a value on a bound counts in that
    bound's bucket, one past the last in +Inf; and nothing before the hand-over."""
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from signer.errors import InvalidArgument, PermissionDenied
    from signer.metrics import COMMIT_BUCKETS, PrometheusMetrics

    metrics = PrometheusMetrics()
    expected = CollectorRegistry()
    reference = Histogram(
        "signer_audit_commit_duration_seconds", "", buckets=COMMIT_BUCKETS, registry=expected
    )
    for seconds in [0.0, 0.0005, 0.00051, 0.001, 0.3, 5.0, 11.0]:
        metrics.audit_committed(seconds, 3)
        reference.observe(seconds)
    now = time.perf_counter()
    for _ in range(4):
        metrics.answered("Signing.Sign", now)
    metrics.refused("Signing.Sign", PermissionDenied("no"), now)
    metrics.refused("Signing.Sign", InvalidArgument("bad"), now)

    def parsed(registry: Any, prefix: str) -> Samples:
        samples: Samples = {}
        for family in text_string_to_metric_families(generate_latest(registry).decode()):
            for sample in family.samples:
                if sample.name.startswith(prefix) and not sample.name.endswith("_created"):
                    samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
        return samples

    commits = "signer_audit_commit_duration_seconds"
    before = parsed(metrics.registry, "signer_")
    assert value(before, f"{commits}_count") == 0 and value(before, "signer_audit_queue_depth") == 0
    metrics.flush()
    metrics.flush()  # nothing new: nothing written twice
    ours = parsed(metrics.registry, "signer_")
    assert parsed(metrics.registry, commits) == parsed(expected, commits)
    assert value(ours, "signer_audit_queue_depth") == 3
    sign = {"rpc": "Signing.Sign"}
    assert value(ours, "signer_request_duration_seconds_count", **sign) == 6
    assert value(ours, "signer_requests_total", **sign, outcome="allowed", code="OK") == 4
    denied = value(
        ours, "signer_requests_total", **sign, outcome="denied", code="PERMISSION_DENIED"
    )
    failed = value(ours, "signer_requests_total", **sign, outcome="failed", code="INVALID_ARGUMENT")
    assert (denied, failed) == (1, 1)
