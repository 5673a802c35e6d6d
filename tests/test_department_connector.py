"""The department connector (前置机): `xhub-connector run CONFIG [--once]`.

Dispatched cases land in the department's inbox table; rows of its status table come back
to the platform as status pushes, each exactly once and in order per case, through a
durable outbox that holds them while the hub is away; a restarted connector resumes from
its cursor and watermark; a refused push is recorded and does not hold up other cases.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from department_world import ITEM, ROOT, S, World, open_world, stages, wait_until
from hubkit import HubKit

from xhub.connectors.cli import main
from xhub.connectors.department.config import DepartmentConfigError, load_department_config
from xhub.connectors.department.connector import DepartmentConnector, PassResult
from xhub.connectors.department.outbox import FAILED, PENDING, SENT
from xhub.connectors.department.rows import parse_missing_items
from xhub.protocol.codes import make_uscc
from xhub.v1 import case_pb2


@pytest.fixture
def world(tmp_path: Path, hub_kit: HubKit) -> Iterator[World]:
    with open_world(tmp_path, hub_kit) as made:
        yield made


# -- inbound --------------------------------------------------------------------------------


def test_dispatched_cases_land_in_the_inbox(world: World) -> None:
    first = world.submit(经营场所="荔湾区示例路1号", 经营项目="热食类食品制售")
    second = world.submit()
    connector = world.connector()

    result = connector.run_once()
    assert (result.received, result.withdrawn, result.unreachable) == (2, 0, "")
    inbox = world.db.inbox()
    assert set(inbox) == {first, second}
    row = inbox[first]
    assert row["item_code"] == ITEM and row["item_name"] == "食品经营许可(新办)"
    assert row["time_limit_days"] == 10
    assert row["applicant_code"] == make_uscc("9", "2", "440103", "00000001")
    assert row["applicant_name"] == "荔湾示例餐饮1号店"
    assert json.loads(row["form_json"]) == {
        "经营场所": "荔湾区示例路1号",
        "经营项目": "热食类食品制售",
    }
    assert json.loads(row["certificates_json"]) == [] and json.loads(row["materials_json"]) == []
    assert row["platform"] == world.kit.member_id("platform")
    assert row["withdrawn"] == 0 and row["withdrawn_at"] is None
    assert row["submitted_at"] <= row["received_at"]

    # The platform withdraws one (撤回): the department sees the flag, nothing else changes.
    world.platform.withdraw_case(second, event_id="withdraw-1", reason="申请人撤回")
    result = connector.run_once()
    assert (result.received, result.withdrawn) == (0, 1)
    inbox = world.db.inbox()
    assert inbox[second]["withdrawn"] == 1 and inbox[second]["withdrawn_at"] is not None
    assert inbox[first] == row

    # Caught up: the next pass resumes after the saved cursor and receives nothing.
    result = connector.run_once()
    assert (result.received, result.withdrawn, result.duplicates) == (0, 0, 0)


def test_a_case_failing_end_to_end_verification_stays_out_of_the_inbox(world: World) -> None:
    genuine = world.submit(经营场所="荔湾区示例路1号")
    (dispatched,) = list(world.kit.client("department").subscribe_cases(0, timeout=0.5))
    # As if the hub (or anyone between) rewrote the application after the platform signed it.
    altered = case_pb2.DispatchedCase()
    altered.CopyFrom(dispatched)
    altered.form["经营场所"] = "另一地址"
    connector = world.connector()
    result = PassResult()
    assert connector.receive(altered, result) == "unverified"
    assert world.db.inbox() == {}
    assert [row.key for row in result.unverified] == [genuine]
    assert "signed submission" in result.unverified[0].reason
    assert "end-to-end" in result.summary()
    assert connector.state.cursor() == altered.cursor  # the same bytes would only come again
    # The stream moves on past it; the genuine bytes are received as usual.
    fresh = world.submit()
    assert connector.run_once().received == 1
    assert set(world.db.inbox()) == {fresh}
    assert connector.receive(dispatched) == "new"
    assert set(world.db.inbox()) == {fresh, genuine}


def test_duplicate_delivery_is_harmless(world: World, tmp_path: Path) -> None:
    case = world.submit()
    world.platform.withdraw_case(case, event_id="withdraw-1", reason="申请人撤回")
    other = world.submit()
    connector = world.connector()
    result = connector.run_once()  # `case`: its dispatch, then its withdrawal
    assert (result.received, result.withdrawn) == (2, 1)
    before = world.db.inbox()
    assert before[case]["withdrawn"] == 1 and before[other]["withdrawn"] == 0

    # The same events again, as after a crash between the inbox write and the cursor save:
    # the whole stream replayed into the same inbox changes nothing, not even timestamps.
    (tmp_path / "state" / "department.sqlite").unlink()
    replay = world.connector()
    result = replay.run_once()
    assert (result.received, result.withdrawn, result.duplicates) == (0, 0, 3)
    assert world.db.inbox() == before

    # One event handed over twice in a row: the second is a no-op.
    dispatched = list(world.kit.client("department").subscribe_cases(0, timeout=0.5))
    assert [replay.receive(dispatched[-1]) for _ in range(2)] == ["duplicate", "duplicate"]
    assert world.db.inbox() == before


# -- outbound -------------------------------------------------------------------------------


def test_a_status_row_becomes_exactly_one_push(world: World) -> None:
    case = world.submit()
    connector = world.connector()
    connector.run_once()

    row = world.db.write(case, "01", opinion="材料齐全，予以受理")
    result = connector.run_once()
    assert (result.queued, result.sent, result.failed, result.pending) == (1, 1, [], 0)
    events = world.events(wait_for=1)
    assert len(events) == 1
    event = events[0]
    assert (event.case_number, event.stage, event.note) == (
        case,
        S.CASE_STAGE_ACCEPTED,
        "材料齐全，予以受理",
    )
    assert event.department == world.kit.member_id("department")
    [sent] = connector.state.outbox(SENT)
    assert event.event_id == sent.event_id and len(sent.event_id) == 32

    # Nothing new: no push. Only the note edited in place: same stage, not pushed again.
    assert connector.run_once().queued == 0
    world.db.change(row, opinion="材料齐全，予以受理（已核验原件）")
    result = connector.run_once()
    assert (result.queued, result.unchanged, result.sent) == (0, 1, 0)
    # An internal step ("" in [status_codes]), a status code nobody mapped, and a case the
    # hub never dispatched here (a counter case, 窗口件) are not pushed.
    world.db.write(case, "99")
    unmapped = world.db.write(case, "77")
    world.db.write("2026LOCAL0001", "01")
    result = connector.run_once()
    assert (result.queued, result.ignored, result.foreign) == (0, 1, 1)
    assert [(e.key, "77" in e.reason) for e in result.skipped] == [(unmapped, True)]
    assert [(e.key, "未映射" in e.reason) for e in connector.state.skipped()] == [(unmapped, True)]

    # The next stage goes through, with the missing items of a 补正 in order.
    world.db.write(case, "20", missing="经营场所证明；健康证明、 食品安全管理制度")
    assert connector.run_once().sent == 1
    events = world.events(wait_for=2)
    assert stages(events, case) == ["ACCEPTED", "SUPPLEMENT_REQUIRED"]
    assert list(events[1].missing_items) == ["经营场所证明", "健康证明", "食品安全管理制度"]


def test_hub_outage_holds_pushes_and_delivers_them_in_order(world: World) -> None:
    first, second = world.submit(), world.submit()
    connector = world.connector()
    assert connector.run_once().received == 2

    world.kit.stop()
    # The department keeps working while the hub is away.
    world.db.write(first, "01")
    world.db.write(second, "01")
    world.db.write(first, "10", opinion="进入审核")
    world.db.write(second, "20", missing='["营业执照"]')
    world.db.write(first, "30", opinion="同意许可")
    result = connector.run_once()
    assert result.unreachable and "UNAVAILABLE" in result.unreachable
    assert (result.queued, result.sent, result.pending) == (5, 0, 5)
    pending = connector.state.outbox(PENDING)
    assert [(e.case_number, e.stage.name) for e in pending] == [
        (first, "ACCEPTED"),
        (second, "ACCEPTED"),
        (first, "UNDER_REVIEW"),
        (second, "SUPPLEMENT_REQUIRED"),
        (first, "APPROVED"),
    ]
    # A second pass while still down queues nothing twice.
    assert connector.run_once().pending == 5

    world.kit.start()
    result = connector.run_once()
    assert (result.unreachable, result.sent, result.pending, result.failed) == ("", 5, 0, [])
    events = world.events(wait_for=5)
    assert stages(events, first) == ["ACCEPTED", "UNDER_REVIEW", "APPROVED"]
    assert stages(events, second) == ["ACCEPTED", "SUPPLEMENT_REQUIRED"]
    assert len({e.event_id for e in events}) == len(events) == 5


def test_loop_mode_rides_out_an_outage_and_stops_on_request(world: World) -> None:
    case = world.submit()
    connector = world.connector()
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            connector.run(stop)
        except BaseException as exc:  # surfaced in the assertion below
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        wait_until(lambda: case in world.db.inbox())
        world.db.write(case, "01")
        wait_until(lambda: len(world.events()) == 1)

        world.kit.stop()
        world.db.write(case, "10")
        world.db.write(case, "30")
        wait_until(lambda: len(connector.state.outbox(PENDING)) == 2)
        # The sender keeps retrying the oldest push, with backoff, and notes why it waits.
        wait_until(lambda: connector.state.outbox(PENDING)[0].attempts >= 2)
        assert "UNAVAILABLE" in connector.state.outbox(PENDING)[0].error

        world.kit.start()
        later = world.submit()  # the case stream resubscribes after the restart
        wait_until(lambda: later in world.db.inbox())
        events = world.events(wait_for=3)
        assert stages(events, case) == ["ACCEPTED", "UNDER_REVIEW", "APPROVED"]
        wait_until(lambda: not connector.state.outbox(PENDING))
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive() and errors == []
    assert len(world.events()) == 3


def test_restart_resumes_without_duplicates_or_losses(world: World) -> None:
    case = world.submit()
    first = world.connector()
    first.run_once()
    world.db.write(case, "01")
    assert first.run_once().sent == 1
    first.close()

    # While no connector runs: a new case, and a status row queued but never sent.
    later = world.submit()
    world.db.write(case, "10")
    world.kit.stop()
    crashed = world.connector()
    assert crashed.run_once().pending == 1
    crashed.close()  # as if killed with the push still in the outbox
    world.kit.start()

    resumed = world.connector()
    result = resumed.run_once()
    assert (result.received, result.duplicates) == (1, 0)  # only the new case
    assert (result.queued, result.sent, result.pending) == (0, 1, 0)  # the held push
    assert set(world.db.inbox()) == {case, later}

    # A push the hub applied but whose answer was lost is sent again: applied once.
    sent = resumed.state.outbox(SENT)
    with resumed.state.engine.begin() as connection:
        connection.exec_driver_sql("UPDATE outbox SET state = 'pending'")
    assert resumed.run_once().sent == 2
    with resumed.state.engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT sum(duplicate) FROM outbox").scalar() == 2
    assert [e.event_id for e in resumed.state.outbox(SENT)] == [e.event_id for e in sent]
    events = world.events(wait_for=2)
    assert stages(events, case) == ["ACCEPTED", "UNDER_REVIEW"]
    assert len(events) == 2


def test_a_refused_push_is_recorded_and_does_not_block(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    stuck, other = world.submit(), world.submit()
    world.connector().run_once()

    world.db.write(stuck, "50")  # 出件 straight from 收件: illegal
    world.db.write(other, "01")
    world.db.write(stuck, "01")  # the department corrects its record
    world.db.write(other, "10")
    # The CLI's one pass reports the refusal, delivers the rest, and exits 1.
    assert main(["run", str(world.config), "--once"]) == 1
    out = capsys.readouterr().out
    assert "推送被拒" in out and stuck in out and "DELIVERED" in out
    assert "3 sent, 1 refused, 0 waiting" in out

    connector = world.connector()
    [failed] = connector.state.outbox(FAILED)
    assert (failed.case_number, failed.stage.name) == (stuck, "DELIVERED")
    assert "FAILED_PRECONDITION" in failed.error and "SUBMITTED" in failed.error
    assert [e.case_number for e in connector.state.outbox(SENT)] == [other, stuck, other]
    events = world.events(wait_for=3)
    assert stages(events, stuck) == ["ACCEPTED"]
    assert stages(events, other) == ["ACCEPTED", "UNDER_REVIEW"]
    # Recorded once: later passes neither retry it nor report it again.
    result = connector.run_once()
    assert (result.sent, result.failed, result.pending) == (0, [], 0)


def test_cli_loop_stops_cleanly_on_sigterm(world: World) -> None:
    case = world.submit()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "xhub.connectors.cli", "run", str(world.config)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: case in world.db.inbox(), timeout=30)
        world.db.write(case, "01")
        wait_until(lambda: len(world.events()) == 1)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr


def test_configuration_is_checked(world: World, tmp_path: Path) -> None:
    text = world.config.read_text("utf-8")
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace('"99" = ""', '"99" = "WITHDRAWN"'), "utf-8")
    with pytest.raises(DepartmentConfigError, match="not a stage a department reports"):
        load_department_config(bad)
    bad.write_text(text.replace('status_column = "status_code"', 'status_column = "nope"'))
    with pytest.raises(DepartmentConfigError, match="lacks: nope"):
        DepartmentConnector(load_department_config(bad))
    assert main(["run", str(bad), "--once"]) == 2
    bad.write_text(text.replace("poll_seconds = 0.1", "poll_seconds = 0.1\noverlap_seconds = -1"))
    with pytest.raises(DepartmentConfigError, match="overlap_seconds"):
        load_department_config(bad)
    assert parse_missing_items('["A", " B "]') == ("A", "B")
    assert parse_missing_items("A\nB；C、D;") == ("A", "B", "C", "D")
    assert parse_missing_items(None) == ()
