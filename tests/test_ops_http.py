"""The operations port: metrics after real SDK calls, readiness that tells the truth, drain.

A real hub on 127.0.0.1 with its metrics port on a free port; plain HTTP with urllib (no
client certificate); SDK calls over mTLS.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import Code, refused
from hubkit import HubKit

from xhub.protocol.errors import XhubError

WAIT_SECONDS = 20.0
GET_MEMBER = "/xhub.v1.RegistryService/GetMember"


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[HubKit]:
    kit = HubKit(tmp_path, metrics=True)
    kit.config = dataclasses.replace(kit.config, health_probe_interval_seconds=0.1)
    with kit.start():
        yield kit


def _get_port(port: int | None, path: str) -> tuple[int, str]:
    """GET over plain HTTP: (status, body)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _get(kit: HubKit, path: str) -> tuple[int, str]:
    assert kit.running is not None and kit.running.metrics_port is not None
    return _get_port(kit.running.metrics_port, path)


def _sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    for line in text.splitlines():
        found = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})? (\S+)", line)
        if found is None or found.group(1) != name:
            continue
        seen = dict(re.findall(r'(\w+)="([^"]*)"', found.group(2) or ""))
        if seen == labels:
            return float(found.group(3))
    return 0.0


def _until(what: Callable[[], object], wanted: object) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    seen = what()
    while seen != wanted:
        assert time.monotonic() < deadline, f"stayed {seen!r}, wanted {wanted!r}"
        time.sleep(0.05)
        seen = what()


@pytest.fixture
def kit_pg(tmp_path: Path, pg_url: str) -> Iterator[HubKit]:
    with HubKit(tmp_path, database_url=pg_url, metrics=True).start() as kit:
        yield kit


@pytest.mark.parametrize("world", ["kit", pytest.param("kit_pg", marks=pytest.mark.postgres)])
def test_metrics_count_allowed_and_refused_calls_as_they_happened(
    world: str, request: pytest.FixtureRequest
) -> None:
    kit: HubKit = request.getfixturevalue(world)
    platform = kit.client("platform")
    for _ in range(3):
        assert platform.get_member(kit.member_id("issuer")).member_id
    nobody = ".".join(kit.member_id("issuer").split(".")[:3]) + ".ghost"
    refused(lambda: platform.get_member(nobody), Code.NOT_FOUND, "NOT_FOUND")

    status, text = _get(kit, "/metrics")
    assert status == 200
    calls = "xhub_calls_total"
    assert _sample(text, calls, method=GET_MEMBER, decision="allowed", reason="") == 3
    assert _sample(text, calls, method=GET_MEMBER, decision="denied", reason="NOT_FOUND") == 1
    assert _sample(text, "xhub_call_duration_seconds_count", method=GET_MEMBER) == 4
    assert _sample(text, "xhub_open_streams", kind="streams") == 0
    assert _sample(text, "xhub_database_errors_total") == 0
    # Every call was audited; the sequencer catches up and the gauges say so.
    _until(lambda: _sample(_get(kit, "/metrics")[1], "xhub_audit_sequencer_lag"), 0.0)
    text = _get(kit, "/metrics")[1]
    assert _sample(text, "xhub_audit_tree_size") >= 4
    assert 0 <= _sample(text, "xhub_audit_checkpoint_age_seconds") < 60


def test_readyz_follows_the_database_and_healthz_stays_live(kit: HubKit) -> None:
    assert _get(kit, "/readyz") == (200, '{"status": "ready"}')
    other = sqlite3.connect(kit.config.data_dir / "xhub.db", timeout=5, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # the one SQLite writer is now someone else
        _until(lambda: _get(kit, "/readyz")[0], 503)
        body = _get(kit, "/readyz")[1]
        assert json.loads(body)["reason"] == "database not writable"
        assert _get(kit, "/healthz")[0] == 200  # the process is alive all the same
    finally:
        other.execute("ROLLBACK")
        other.close()
    _until(lambda: _get(kit, "/readyz")[0], 200)
    assert _sample(_get(kit, "/metrics")[1], "xhub_database_errors_total") >= 1


def test_drain_says_not_ready_then_ends_subscriptions_with_hub_busy(kit: HubKit) -> None:
    department = kit.client("department")
    client = kit.client("platform")
    ended: list[XhubError] = []

    def subscribe() -> None:
        try:
            for _ in department.subscribe_cases():
                pass
        except XhubError as exc:
            ended.append(exc)

    reader = threading.Thread(target=subscribe, daemon=True)
    reader.start()
    _until(lambda: _sample(_get(kit, "/metrics")[1], "xhub_open_streams", kind="streams"), 1.0)
    assert kit.running is not None
    running = kit.running
    port = running.metrics_port
    stopping = kit.begin_stop(grace=1.0, drain=1.5)
    _until(lambda: _get_port(port, "/readyz")[0], 503)
    assert json.loads(_get_port(port, "/readyz")[1])["reason"].startswith("draining")
    assert client.health() == "NOT_SERVING"  # the port still accepts during the drain
    assert not ended  # subscriptions run on until the drain period is over
    stopping.result(timeout=15)
    reader.join(timeout=10)
    assert [(e.code, e.reason_name, e.retryable) for e in ended] == [
        (Code.UNAVAILABLE, "HUB_BUSY", True)
    ]
