"""Health tells the truth: NOT_SERVING while the database takes no writes, SERVING again after.

SQLite: another process holds the write lock (``BEGIN IMMEDIATE``). PostgreSQL: the hub's
database stops accepting connections and its sessions are cut. Each hub probes every 0.1 s;
each wait below is bounded.
"""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from hubkit import HubKit
from pgserver import PgServer

from xhub.hub.core.failures import FailureLog, log_internal_error

WAIT_SECONDS = 20.0


def _until(what: Callable[[], str], wanted: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    seen = what()
    while seen != wanted:
        assert time.monotonic() < deadline, f"health stayed {seen}, wanted {wanted}"
        time.sleep(0.1)
        seen = what()


def _started(kit: HubKit) -> HubKit:
    kit.config = dataclasses.replace(kit.config, health_probe_interval_seconds=0.1)
    return kit.start()


def test_sqlite_locked_by_another_writer_goes_not_serving_then_back(tmp_path: Path) -> None:
    with _started(HubKit(tmp_path)) as kit:
        client = kit.client("platform")
        assert client.health() == "SERVING"
        other = sqlite3.connect(kit.config.data_dir / "xhub.db", timeout=5, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # the one SQLite writer is now someone else
            _until(client.health, "NOT_SERVING")
            _until(lambda: client.health("xhub.v1.RegistryService"), "NOT_SERVING")
        finally:
            other.execute("ROLLBACK")
            other.close()
        _until(client.health, "SERVING")
        assert client.get_member(kit.member_id("platform")).member_id  # and calls work again


@pytest.mark.postgres
def test_postgres_unreachable_goes_not_serving_then_back(
    tmp_path: Path, pg_server: PgServer, pg_url: str
) -> None:
    dbname = pg_url.rsplit("/", 1)[1]
    with _started(HubKit(tmp_path, database_url=pg_url)) as kit:
        client = kit.client("platform")
        assert client.health() == "SERVING"
        with psycopg.connect(pg_server.conninfo("postgres"), autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS false')
            try:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                    (dbname,),
                )
                _until(client.health, "NOT_SERVING")
            finally:
                admin.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true')
        _until(client.health, "SERVING")
        assert client.get_member(kit.member_id("platform")).member_id


def test_a_failing_job_logs_one_traceback_then_one_line_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = logging.getLogger("xhub.test.failures")
    failures = FailureLog(log, "the job")
    with caplog.at_level(logging.INFO, logger="xhub.test.failures"):
        for _ in range(50):
            failures.failed(OSError("disk full"))
        failures.failed(TimeoutError("slow"))  # another failure: its own traceback
        assert failures.succeeded() is True
        assert failures.succeeded() is False
    lines = [(r.levelname, r.getMessage(), r.exc_info is not None) for r in caplog.records]
    assert lines == [
        ("ERROR", "the job failed (OSError)", True),
        ("ERROR", "the job failed (TimeoutError)", True),
        ("INFO", "the job recovered after 51 failure(s)", False),
    ]


def test_an_internal_error_logs_its_traceback_once_per_place_and_kind(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = logging.getLogger("xhub.test.internal")
    with caplog.at_level(logging.ERROR, logger="xhub.test.internal"):
        for _ in range(3):
            log_internal_error(log, "/xhub.v1.Test/Once", KeyError("x"))
        log_internal_error(log, "/xhub.v1.Test/Once", ValueError("y"))
    with_traceback = [r.getMessage() for r in caplog.records if r.exc_info]
    assert with_traceback == [
        "internal error in /xhub.v1.Test/Once (KeyError)",
        "internal error in /xhub.v1.Test/Once (ValueError)",
    ]
    assert len(caplog.records) == 4
