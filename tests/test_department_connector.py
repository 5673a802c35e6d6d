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
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hubkit import HubKit
from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    insert,
    inspect,
    select,
    update,
)

from xhub.connectors.cli import main
from xhub.connectors.department.config import DepartmentConfigError, load_department_config
from xhub.connectors.department.connector import (
    DepartmentConnector,
    PassResult,
    parse_missing_items,
)
from xhub.connectors.department.outbox import FAILED, PENDING, SENT
from xhub.connectors.sdk.client import HubClient
from xhub.hub.catalog import store as catalog
from xhub.protocol.codes import make_uscc
from xhub.v1 import case_pb2, intake_pb2

ROOT = Path(__file__).resolve().parent.parent
ITEM = "11440103MB2C9052XK-0001"  # 食品经营许可(新办)
PURPOSE = "办理食品经营许可"
S = case_pb2  # stage constants: S.CASE_STAGE_ACCEPTED, ...


class DepartmentDb:
    """The department's own database: a status process log (办件过程表), clock moving forward."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.engine: Engine = create_engine(f"sqlite:///{path}")
        self.metadata = MetaData()
        self.status = Table(
            "case_status",
            self.metadata,
            Column("id", Integer, primary_key=True),
            Column("case_no", String(40)),
            Column("status_code", String(4), nullable=False),
            Column("opinion", String(200)),
            Column("missing", String(400)),
            Column("licence_id", String(100)),
            Column("updated_at", DateTime),
        )
        self.metadata.create_all(self.engine)
        self.clock = datetime(2026, 3, 2, 9, 0, 0)
        self.next_id = 1

    def tick(self) -> datetime:
        self.clock += timedelta(seconds=1)
        return self.clock

    def write(self, case_no: str, code: str, **values: Any) -> int:
        """Append a status row, as the approval system does at each step."""
        ident, self.next_id = self.next_id, self.next_id + 1
        with self.engine.begin() as connection:
            connection.execute(
                insert(self.status).values(
                    id=ident, case_no=case_no, status_code=code, updated_at=self.tick(), **values
                )
            )
        return ident

    def change(self, ident: int, **values: Any) -> None:
        """Update a row in place (a status table kept per case)."""
        with self.engine.begin() as connection:
            connection.execute(
                update(self.status)
                .where(self.status.c.id == ident)
                .values(updated_at=self.tick(), **values)
            )

    def inbox(self) -> dict[str, dict[str, Any]]:
        if not inspect(self.engine).has_table("xhub_inbox"):
            return {}  # the connector has not started yet
        inbox = Table("xhub_inbox", MetaData(), autoload_with=self.engine)
        with self.engine.connect() as connection:
            rows = connection.execute(select(inbox)).mappings().all()
        return {row["case_number"]: dict(row) for row in rows}

    def close(self) -> None:
        self.engine.dispose()


def write_config(tmp_path: Path, kit: HubKit, db: Path, **hub: Any) -> Path:
    extra = "".join(f"{key} = {value}\n" for key, value in hub.items())
    config = tmp_path / "department.toml"
    config.write_text(
        f"""
[hub]
bundle = "{kit.members["department"].bundle_dir}"
address = "{kit.address}"
retry_initial_seconds = 0.05
retry_max_seconds = 0.3
once_attempts = 5
subscribe_seconds = 0.6
{extra}
[department]
url = "sqlite:///{db}"
inbox_table = "xhub_inbox"
status_table = "case_status"
key_column = "id"
case_column = "case_no"
status_column = "status_code"
updated_at_column = "updated_at"
note_column = "opinion"
missing_items_column = "missing"
certificate_column = "licence_id"
poll_seconds = 0.1

[status_codes]
"01" = "ACCEPTED"
"02" = "不予受理"
"10" = "UNDER_REVIEW"
"20" = "补正"
"30" = "APPROVED"
"31" = "REJECTED"
"40" = "COMPLETED"
"50" = "DELIVERED"
"99" = ""

[state]
path = "state/department.sqlite"
""",
        "utf-8",
    )
    return config


@dataclass
class World:
    kit: HubKit
    db: DepartmentDb
    config: Path
    platform: HubClient
    opened: list[DepartmentConnector] = field(default_factory=list)
    applicants: int = 0

    def connector(self) -> DepartmentConnector:
        connector = DepartmentConnector(load_department_config(self.config))
        self.opened.append(connector)
        return connector

    def submit(self, **form: str) -> str:
        """The platform prepares and submits a case (提交办件); returns its number."""
        self.applicants += 1
        applicant = make_uscc("9", "2", "440103", f"{self.applicants:08d}")
        checklist = self.platform.prepare_case(ITEM, applicant, purpose=PURPOSE)
        receipt = self.platform.submit_case(
            checklist.case_id,
            purpose=PURPOSE,
            applicant_name=f"荔湾示例餐饮{self.applicants}号店",
            form=form or {"经营场所": "荔湾区示例路1号"},
        )
        return receipt.case_number

    def events(self, *, wait_for: int = 0, timeout: float = 15.0) -> list[case_pb2.StatusEvent]:
        """Every status event the platform receives, waiting until there are ``wait_for``."""
        deadline = time.monotonic() + timeout
        while True:
            events = list(self.platform.subscribe_status(0, timeout=0.4))
            if len(events) >= wait_for or time.monotonic() > deadline:
                return events


def stages(events: list[case_pb2.StatusEvent], case_number: str) -> list[str]:
    return [S.CaseStage.Name(e.stage)[11:] for e in events if e.case_number == case_number]


def wait_until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture
def world(tmp_path: Path, hub_kit: HubKit) -> Iterator[World]:
    with hub_kit.session() as session:
        catalog.put_items(
            session,
            [
                intake_pb2.Item(
                    code=ITEM,
                    name="食品经营许可(新办)",
                    departments=[hub_kit.member_id("department")],
                    time_limit_days=10,
                    materials=[
                        intake_pb2.RequiredMaterial(
                            code="M01", name="经营场所证明", material_types=["PREMISES"]
                        )
                    ],
                )
            ],
        )
    db = DepartmentDb(tmp_path / "department.db")
    made = World(hub_kit, db, write_config(tmp_path, hub_kit, db.path), hub_kit.client("platform"))
    yield made
    for connector in made.opened:
        connector.close()
    db.close()


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
    assert parse_missing_items('["A", " B "]') == ("A", "B")
    assert parse_missing_items("A\nB；C、D;") == ("A", "B", "C", "D")
    assert parse_missing_items(None) == ()
