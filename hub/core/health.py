"""Health that tells the truth: is the database reachable and taking writes?

The probe writes this process's heartbeat row (an upsert, committed) with a short lock wait,
so a locked, unreachable, read-only or full database fails it within about a second. The
server's health loop turns the answer into SERVING / NOT_SERVING for every service.
"""

from __future__ import annotations

import os
import socket
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, delete, insert, update

from xhub.hub.core.db import SQLITE_BUSY_TIMEOUT_MS, HeartbeatRow, table_of

PROBE_LOCK_WAIT_MS = 1_000
PROBE_WRITERS_WAIT_SECONDS = 3.0
_HEARTBEATS = table_of(HeartbeatRow)


def process_id() -> str:
    """This hub process among several sharing one database (host and pid)."""
    return f"{socket.gethostname()[:100]}:{os.getpid()}"


class WritersStuck(RuntimeError):
    """This process's own writers have held the database for longer than a probe waits."""


def probe_through(lock: AbstractContextManager[Any], engine: Engine, process: str) -> None:
    """Probe after the writers of this process (SQLite's in-process write lock), but give up
    when they hold it too long: a stuck writer means the database is not taking writes."""
    acquire = getattr(lock, "acquire", None)
    if acquire is None:  # PostgreSQL: no in-process lock
        probe_database(engine, process)
        return
    if not acquire(timeout=PROBE_WRITERS_WAIT_SECONDS):
        raise WritersStuck(f"no write got through for {PROBE_WRITERS_WAIT_SECONDS:.0f} s")
    try:
        probe_database(engine, process)
    finally:
        getattr(lock, "release")()  # noqa: B009


def probe_database(engine: Engine, process: str) -> None:
    """Commit this process's heartbeat; raise whatever the database raises when it cannot."""
    now = datetime.now(UTC)
    with engine.connect() as connection:
        if connection.dialect.name == "sqlite":
            connection.exec_driver_sql(f"PRAGMA busy_timeout={PROBE_LOCK_WAIT_MS}")
        else:
            connection.exec_driver_sql(f"SET LOCAL lock_timeout = '{PROBE_LOCK_WAIT_MS}ms'")
        try:
            updated = connection.execute(
                update(_HEARTBEATS).where(_HEARTBEATS.c.process_id == process).values(beat_at=now)
            ).rowcount
            if not updated:
                connection.execute(insert(_HEARTBEATS).values(process_id=process, beat_at=now))
            connection.commit()
        finally:
            if connection.dialect.name == "sqlite":
                connection.exec_driver_sql(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")


def forget_heartbeat(engine: Engine, process: str) -> None:
    with engine.begin() as connection:
        connection.execute(delete(_HEARTBEATS).where(_HEARTBEATS.c.process_id == process))
