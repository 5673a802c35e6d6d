"""Nothing dropped silently (issue 12): every status row the department connector does not
send is logged and recorded with its reason, rows committed late below the watermark are
still sent, and ``xhub-connector status CONFIG`` shows pending, sent, refused and passed-over
rows, with an exit code a monitor can act on.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from department_world import World, open_world, stages
from hubkit import HubKit

from xhub.connectors.cli import main
from xhub.connectors.department.reasons import CASE_NOT_DISPATCHED, UNMAPPED_STATUS_CODE

CITIZEN = "440103199001011234"  # personal data in a note: never in a log line or a report
COUNTER_CASE = "2026LOCAL0001"  # the department's own counter case (窗口件)


@pytest.fixture
def world(tmp_path: Path, hub_kit: HubKit) -> Iterator[World]:
    with open_world(tmp_path, hub_kit) as made:
        yield made


@pytest.fixture
def world_any_db(tmp_path: Path, hub_kit: HubKit, db_url: str) -> Iterator[World]:
    """The department's own database on SQLite and on PostgreSQL."""
    with open_world(tmp_path, hub_kit, db_url) as made:
        yield made


def variant(world: World, name: str, *, department: str = "", state: str = "") -> Path:
    """The world's connector TOML with keys added to [department] and [state]; same folder,
    so the same state file."""
    text = world.config.read_text("utf-8")
    text = text.replace("poll_seconds = 0.1\n", f"poll_seconds = 0.1\n{department}\n")
    text = text.replace(
        'path = "state/department.sqlite"\n', f'path = "state/department.sqlite"\n{state}\n'
    )
    path = world.config.with_name(name)
    path.write_text(text, "utf-8")
    return path


def status_json(config: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    capsys.readouterr()
    code = main(["status", str(config), "--json"])
    report: dict[str, Any] = json.loads(capsys.readouterr().out)
    return code, report


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_row_for_a_case_never_dispatched_here_is_reported(
    world: World, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    world.submit()
    connector = world.connector()
    connector.run_once()
    counter = world.db.write(COUNTER_CASE, "01", opinion=f"申请人身份证号 {CITIZEN}")

    with caplog.at_level(logging.INFO, logger="xhub.connector.department"):
        result = connector.run_once()
    assert (result.queued, result.foreign) == (0, 1)
    [line] = warnings(caplog)
    assert f"status row {counter}" in line and CASE_NOT_DISPATCHED in line
    assert COUNTER_CASE in line and CITIZEN not in caplog.text

    [row] = connector.state.passed_over()
    assert (row.key, row.case_number, row.native_code, row.reason_code) == (
        counter,
        COUNTER_CASE,
        "01",
        CASE_NOT_DISPATCHED,
    )
    # The department reads the same in its connector's state file.
    state_file = world.config.parent / "state" / "department.sqlite"
    with sqlite3.connect(state_file) as db:
        listed = db.execute(
            "SELECT row_key, case_number, state, reason_code, reason, recorded_at FROM row_status"
        ).fetchall()
    assert [entry[:4] for entry in listed] == [
        (counter, COUNTER_CASE, "passed_over", CASE_NOT_DISPATCHED)
    ]
    assert "not dispatched" in listed[0][4] and listed[0][5]

    # Read again on the next pass (the watermark's overlap window): reported once only.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="xhub.connector.department"):
        assert connector.run_once().foreign == 0
    assert warnings(caplog) == []
    assert len(connector.state.passed_over()) == 1

    # `status` lists it; a status table holding counter cases is expected by default...
    assert main(["status", str(world.config)]) == 0
    out = capsys.readouterr().out
    assert "passed over" in out and COUNTER_CASE in out and CASE_NOT_DISPATCHED in out
    assert CITIZEN not in out
    # ...and a department whose table holds only the hub's cases calls it an error.
    strict = variant(world, "strict.toml", department="counter_cases = false")
    code, report = status_json(strict, capsys)
    assert code == report["exit_code"] == 1
    assert report["counts"]["in_error"] == 1
    # So does its one pass (``run --once``) for such a row, naming it.
    again = world.db.write(COUNTER_CASE, "10")
    capsys.readouterr()
    assert main(["run", str(strict), "--once"]) == 1
    out = capsys.readouterr().out
    assert f"status row {again} passed over ({CASE_NOT_DISPATCHED})" in out
    assert "skipped, 1 passed over" in out  # the row reported before is not again


def test_a_row_committed_late_below_the_watermark_is_still_sent(world_any_db: World) -> None:
    world = world_any_db
    first, second = world.submit(), world.submit()
    connector = world.connector()
    connector.run_once()

    world.db.write(first, "01")
    # Two transactions for `second` begin (key and updated_at taken now) and commit late...
    early_key, early_at = world.db.reserve(), world.db.tick()
    tied_key = world.db.reserve()
    # ...while a later one commits and is read: the watermark passes both.
    world.db.write(first, "10")
    assert connector.run_once().sent == 2
    world.db.write(second, "01", at=early_at, ident=early_key)  # below the watermark
    world.db.write(second, "10", at=world.db.clock, ident=tied_key)  # its time, a lower key

    result = connector.run_once()
    assert (result.queued, result.sent, result.failed) == (2, 2, [])
    events = world.events(wait_for=4)
    assert stages(events, first) == ["ACCEPTED", "UNDER_REVIEW"]
    assert stages(events, second) == ["ACCEPTED", "UNDER_REVIEW"]
    # Read again within the overlap window, deduplicated by event id: nothing sent twice.
    result = connector.run_once()
    assert (result.queued, result.unchanged, result.sent) == (0, 0, 0)
    assert len(world.events()) == 4


def test_status_lists_pending_sent_refused_and_passed_over(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    stuck, other = world.submit(), world.submit()
    # Never run: nothing to report, and no state file made by asking.
    code, report = status_json(world.config, capsys)
    assert (code, report["watermark"], report["rows"]) == (0, None, [])
    assert not (world.config.parent / "state" / "department.sqlite").exists()
    connector = world.connector()
    connector.run_once()
    code, report = status_json(world.config, capsys)
    assert code == 0 and report["connector"] == "department" and report["rows"] == []

    refused = world.db.write(stuck, "50", opinion=CITIZEN)  # 出件 straight from 收件: illegal
    sent = world.db.write(other, "01")
    unmapped = world.db.write(other, "77")
    connector.run_once()
    world.kit.stop()
    pending = world.db.write(other, "10")
    assert connector.run_once().pending == 1

    code, report = status_json(world.config, capsys)
    assert code == report["exit_code"] == 1  # a refused push and an unmapped code
    assert report["counts"] == {
        "pending": 1,
        "sent": 1,
        "refused": 1,
        "passed_over": 1,
        "stuck": 0,
        "in_error": 2,
    }
    rows = {row["key"]: row for row in report["rows"]}
    assert {key: rows[key]["state"] for key in rows} == {
        refused: "refused",
        sent: "sent",
        unmapped: "passed_over",
        pending: "pending",
    }
    assert (rows[refused]["subject"], rows[refused]["stage"]) == (stuck, "DELIVERED")
    assert "FAILED_PRECONDITION" in rows[refused]["reason"]
    assert rows[unmapped]["reason_code"] == UNMAPPED_STATUS_CODE
    assert (rows[pending]["subject"], rows[pending]["stage"]) == (other, "UNDER_REVIEW")
    assert all(row["at"] for row in report["rows"])
    assert report["watermark"]["key"] == pending
    assert CITIZEN not in json.dumps(report, ensure_ascii=False)

    capsys.readouterr()
    assert main(["status", str(world.config)]) == 1
    out = capsys.readouterr().out
    for heading in ("pending (待回传) 1", "sent (已回传) 1", "refused (推送被拒) 1", "passed over"):
        assert heading in out
    assert UNMAPPED_STATUS_CODE in out and CITIZEN not in out
    world.kit.start()


def test_status_exit_codes_for_stuck_pushes(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    case = world.submit()
    connector = world.connector()
    connector.run_once()
    world.kit.stop()
    world.db.write(case, "01")
    assert connector.run_once().pending == 1

    # Waiting, but not yet for long: nothing is stuck.
    code, report = status_json(world.config, capsys)
    assert (code, report["counts"]["pending"], report["counts"]["stuck"]) == (0, 1, 0)
    impatient = variant(world, "impatient.toml", state="stuck_after_seconds = 0")
    code, report = status_json(impatient, capsys)
    assert (code, report["counts"]["stuck"]) == (5, 1)

    world.kit.start()
    assert connector.run_once().sent == 1
    code, report = status_json(impatient, capsys)
    assert (code, report["counts"]["pending"], report["counts"]["sent"]) == (0, 0, 1)


def test_pruning_keeps_what_the_next_pass_reads_again(world: World) -> None:
    case = world.submit()
    world.config = variant(world, "eager.toml", state="keep_sent_days = 0")
    connector = world.connector()
    connector.run_once()
    world.db.write(case, "01")
    counter = world.db.write(COUNTER_CASE, "01")
    assert connector.run_once().sent == 1
    # Kept no days, but still in the overlap window: known by its event id, never sent twice.
    for _ in range(2):
        result = connector.run_once()
        assert (result.queued, result.sent, result.foreign) == (0, 0, 0)
    assert [e.case_number for e in connector.state.outbox()] == [case]
    assert [row.key for row in connector.state.passed_over()] == [counter]
    assert len(world.events(wait_for=1)) == 1

    # Once the watermark has moved past the window, they go.
    world.db.clock += timedelta(hours=1)
    world.db.write(case, "10")
    assert connector.run_once().sent == 1
    connector.run_once()
    assert [e.stage.name for e in connector.state.outbox()] == ["UNDER_REVIEW"]
    assert connector.state.passed_over() == []
    assert stages(world.events(wait_for=2), case) == ["ACCEPTED", "UNDER_REVIEW"]
