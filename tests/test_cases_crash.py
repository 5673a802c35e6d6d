"""Nothing is lost or applied twice across ``kill -9`` of a hub process with streams open and
events in flight, on SQLite and on PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
from cases_world import (
    HAPPY_PATH,
    XHUB,
    Desk,
    M,
    make_kit,
    name,
)
from hubkit import HubKit
from sqlalchemy import func, select

from xhub.connectors import RetryPolicy, TransportError, XhubError
from xhub.hub.core.db import CaseEventRow
from xhub.protocol.errors import RETRYABLE_CODES
from xhub.v1 import case_pb2

# -- crash: kill -9 of a hub process with streams open and events in flight --------------------


@dataclass
class HubProcess:
    """``xhub serve`` as a real process on the kit's data directory and port."""

    kit: HubKit
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    str(XHUB),
                    "serve",
                    "--data-dir",
                    str(self.kit.config.data_dir),
                    "--listen",
                    self.kit.address,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "XHUB_SHUTDOWN_GRACE_SECONDS": "1", "XHUB_METRICS_LISTEN": ""},
            )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def _retrying(fn: Callable[[], M], retries: list[str], give_up: float = 60.0) -> M:
    """Call until the hub answers: a department simply retries an idempotent push."""
    deadline = time.monotonic() + give_up
    while True:
        try:
            return fn()
        except (TransportError, XhubError) as exc:
            if getattr(exc, "code", None) not in RETRYABLE_CODES or time.monotonic() > deadline:
                raise
            retries.append(str(exc))
            time.sleep(0.05)


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_kill_9_loses_nothing_and_applies_nothing_twice(
    tmp_path: Path, request: pytest.FixtureRequest, backend: str
) -> None:
    url = "" if backend == "sqlite" else request.getfixturevalue("pg_url")
    kit = make_kit(tmp_path, url)  # data directory and members; the subprocess serves
    hub = HubProcess(kit, tmp_path / "hub.log")
    hub.start()
    try:
        fast = RetryPolicy(attempts=2, initial_backoff=0.05, max_backoff=0.2)
        desk = Desk(kit)
        desk.department = kit.client("department", retry=fast, timeout=5)
        desk.platform.wait_until_serving(timeout=30)
        cases = [desk.submit().case_number for _ in range(6)]
        plan = [(case, stage, f"k9-{i}-{name(stage)}") for stage in HAPPY_PATH
                for i, case in enumerate(cases)]  # fmt: skip
        received: list[case_pb2.StatusEvent] = []
        pushed: list[case_pb2.StatusPushResult] = []
        retries: list[str] = []
        failures: list[BaseException] = []
        finished = threading.Event()

        def follow() -> None:
            try:
                for event in desk.platform.follow(
                    desk.platform.subscribe_status, 0, stop=finished.is_set, max_backoff=0.3
                ):
                    received.append(event)
                    if len(received) >= len(plan):
                        return
            except BaseException as exc:
                failures.append(exc)

        def push() -> None:
            try:
                for case, stage, eid in plan:
                    pushed.append(
                        _retrying(
                            partial(desk.department.push_status, case, stage, event_id=eid),
                            retries,
                        )
                    )
                    time.sleep(0.02)
            except BaseException as exc:
                failures.append(exc)

        follower = threading.Thread(target=follow, daemon=True)
        pusher = threading.Thread(target=push, daemon=True)
        follower.start()
        pusher.start()
        deadline = time.monotonic() + 30
        while (len(pushed) < len(plan) // 3 or len(received) < 3) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not failures, failures
        hub.kill()  # streams open, pushes in flight
        killed_at = len(pushed)
        time.sleep(0.3)
        hub.start()
        pusher.join(timeout=60)
        follower.join(timeout=20)
        finished.set()
        assert not failures, f"{failures!r}\n{hub.output()}"
        assert not pusher.is_alive() and not follower.is_alive(), hub.output()
        assert 0 < killed_at < len(plan)
        assert len(pushed) == len(plan)
        assert retries, "no push was in flight while the hub was down"
        assert [(p.stage, p.case_number) for p in pushed] == [(s, c) for c, s, _ in plan]
        # Exactly once per event id, in cursor order, nothing missing.
        cursors = [e.cursor for e in received]
        assert cursors == sorted(set(cursors)), "a cursor was delivered twice or out of order"
        assert Counter(e.event_id for e in received) == Counter(eid for _, _, eid in plan)
        for case in cases:
            assert [e.stage for e in received if e.case_number == case] == list(HAPPY_PATH)
        with kit.session() as session:
            rows = session.execute(
                select(CaseEventRow.event_id, func.count())
                .where(CaseEventRow.kind == "status")
                .group_by(CaseEventRow.event_id)
            ).all()
        assert dict(rows) == {eid: 1 for _, _, eid in plan}
    finally:
        hub.stop()
        kit.close()
