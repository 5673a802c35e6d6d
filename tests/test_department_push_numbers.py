"""The department connector's push numbers (回传序号, the ``push_numbers`` table of
connectors/department/outbox.py): each push of a case carries the next number inside the
department's signed bytes, so the platform notices a push the hub dropped.

A push retried after a transport failure keeps its number; a push the hub refuses frees it;
numbers survive a restart; a connector whose table was lost adopts the hub's
``expected_sequence`` once, with a warning. Each test reads the numbers out of the signed
pushes the platform verified (``StatusEvent.origin``), and the numbers the connector sent.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from department_world import World, open_world, stages
from hubkit import HubKit

from xhub.connectors.department.connector import DepartmentConnector
from xhub.connectors.department.outbox import FAILED, PENDING, SENT
from xhub.protocol.errors import TransportError
from xhub.v1 import case_pb2


@pytest.fixture
def world(tmp_path: Path, hub_kit: HubKit) -> Iterator[World]:
    with open_world(tmp_path, hub_kit) as made:
        yield made


class Wire:
    """The numbers a connector's client sends, and a transport failure on demand: before the
    hub sees the push ("lost request") or after it applied it ("lost answer")."""

    def __init__(self, connector: DepartmentConnector) -> None:
        assert connector.client is not None
        self.real = connector.client.push_status
        self.sent: list[tuple[str, int]] = []
        self.fail: list[str] = []  # one of "request" / "answer" per call to break
        connector.client.push_status = self.push  # type: ignore[method-assign]

    def push(self, case_number: str, *args: Any, **kwargs: Any) -> case_pb2.StatusPushResult:
        self.sent.append((case_number, int(kwargs["sequence"])))
        failure = self.fail.pop(0) if self.fail else ""
        if failure == "request":
            raise TransportError(grpc.StatusCode.UNAVAILABLE, "connection reset (test)")
        result = self.real(case_number, *args, **kwargs)
        if failure == "answer":
            raise TransportError(grpc.StatusCode.UNAVAILABLE, "answer lost (test)")
        return result

    def numbers(self, case_number: str) -> list[int]:
        return [number for case, number in self.sent if case == case_number]


def signed_numbers(world: World, case_number: str, *, wait_for: int) -> list[int]:
    """The push numbers inside the department's signed pushes the platform verified."""
    events = world.events(wait_for=wait_for)
    return [
        case_pb2.StatusPush.FromString(e.origin.payload).sequence
        for e in events
        if e.case_number == case_number
    ]


def push_numbers(connector: DepartmentConnector) -> list[tuple[str, int, str, int]]:
    with connector.state.engine.connect() as connection:
        rows = connection.exec_driver_sql(
            "SELECT case_number, last_sent, pending_event_id, pending_number FROM push_numbers"
        ).all()
    return [tuple(row) for row in rows]  # type: ignore[misc]


@pytest.mark.parametrize("lost", ["request", "answer"])
def test_a_push_retried_after_a_transport_failure_keeps_its_number(world: World, lost: str) -> None:
    case = world.submit()
    connector = world.connector()
    connector.run_once()
    wire = Wire(connector)
    wire.fail.append(lost)
    world.db.write(case, "01")
    result = connector.run_once()
    assert (result.sent, result.failed, result.pending) == (1, [], 0)
    assert wire.numbers(case) == [1, 1]  # the retry carried the same signed number
    [sent] = connector.state.outbox(SENT)
    assert sent.attempts == 2
    with connector.state.engine.connect() as connection:
        duplicate = connection.exec_driver_sql("SELECT duplicate FROM outbox").scalar()
    assert duplicate == (1 if lost == "answer" else 0)  # applied once either way

    world.db.write(case, "10")
    assert connector.run_once().sent == 1
    assert wire.numbers(case) == [1, 1, 2]
    assert signed_numbers(world, case, wait_for=2) == [1, 2]  # no gap for the platform
    assert push_numbers(connector) == [(case, 2, "", 0)]


def test_a_push_the_hub_refuses_frees_its_number(world: World) -> None:
    case = world.submit()
    connector = world.connector()
    connector.run_once()
    wire = Wire(connector)
    world.db.write(case, "50")  # 出件 straight from 收件: refused
    world.db.write(case, "01")
    world.db.write(case, "10")
    result = connector.run_once()
    assert (result.sent, len(result.failed), result.pending) == (2, 1, 0)
    [failed] = connector.state.outbox(FAILED)
    assert failed.stage.name == "DELIVERED"
    assert wire.numbers(case) == [1, 1, 2]  # the refused push's number went to the next
    assert signed_numbers(world, case, wait_for=2) == [1, 2]
    assert stages(world.events(), case) == ["ACCEPTED", "UNDER_REVIEW"]
    assert push_numbers(connector) == [(case, 2, "", 0)]


def test_numbers_survive_a_connector_restart(world: World) -> None:
    case = world.submit()
    first = world.connector()
    first.run_once()
    world.db.write(case, "01")
    assert first.run_once().sent == 1
    # The next push is numbered, never answered (every attempt's connection breaks), and
    # the connector stops with it in the outbox.
    cut = Wire(first)
    cut.fail.extend(["request"] * 10)
    world.db.write(case, "10")
    result = first.run_once()
    assert (result.sent, result.pending) == (0, 1) and "connection reset" in result.unreachable
    assert set(cut.numbers(case)) == {2}
    [waiting] = first.state.outbox(PENDING)
    assert push_numbers(first) == [(case, 1, waiting.event_id, 2)]
    first.close()

    resumed = world.connector()
    wire = Wire(resumed)
    world.db.write(case, "30")
    result = resumed.run_once()
    assert (result.sent, result.failed, result.pending) == (2, [], 0)
    assert wire.numbers(case) == [2, 3]  # the held push kept 2; no refusal, nothing adopted
    assert signed_numbers(world, case, wait_for=3) == [1, 2, 3]


def test_a_lost_number_table_adopts_the_hubs_number_once_with_a_warning(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    case = world.submit()
    connector = world.connector()
    connector.run_once()
    world.db.write(case, "01")
    world.db.write(case, "10")
    assert connector.run_once().sent == 2
    with connector.state.engine.begin() as connection:  # e.g. restored from an old backup
        connection.exec_driver_sql("DELETE FROM push_numbers")
    wire = Wire(connector)
    world.db.write(case, "30")
    with caplog.at_level(logging.WARNING, logger="xhub.connector.department"):
        assert connector.run_once().sent == 1
    adopted = [r.getMessage() for r in caplog.records if "回传序号" in r.getMessage()]
    assert adopted == [f"case {case}: the hub expects push number 3 (回传序号); adopting it"]
    assert wire.numbers(case) == [1, 3]  # refused as reused, then the hub's number
    # Adopted once: the next push follows on from it without asking the hub again.
    caplog.clear()
    world.db.write(case, "40")
    with caplog.at_level(logging.WARNING, logger="xhub.connector.department"):
        assert connector.run_once().sent == 1
    assert wire.numbers(case) == [1, 3, 4]
    assert not [r for r in caplog.records if "回传序号" in r.getMessage()]
    assert signed_numbers(world, case, wait_for=4) == [1, 2, 3, 4]


def test_a_recreated_state_file_resends_under_the_same_numbers(world: World) -> None:
    """The whole state file lost: the rows are read again, their pushes (same event ids)
    answered as duplicates under the numbers they had, and the next push goes on from them."""
    case = world.submit()
    connector = world.connector()
    connector.run_once()
    world.db.write(case, "01")
    world.db.write(case, "10")
    assert connector.run_once().sent == 2
    connector.close()
    state_file = world.config.parent / "state" / "department.sqlite"
    for path in state_file.parent.glob(state_file.name + "*"):
        path.unlink()

    recreated = world.connector()
    wire = Wire(recreated)
    world.db.write(case, "30")
    result = recreated.run_once()
    assert (result.sent, result.failed, result.pending) == (3, [], 0)
    assert wire.numbers(case) == [1, 2, 3]
    assert signed_numbers(world, case, wait_for=3) == [1, 2, 3]
    assert stages(world.events(), case) == ["ACCEPTED", "UNDER_REVIEW", "APPROVED"]
