"""The department connector's test world, shared by tests/test_department_*.py: the
department's own database (a status process log), its connector TOML, and a platform that
submits cases to a real hub."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

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

from xhub.connectors.department.config import load_department_config
from xhub.connectors.department.connector import DepartmentConnector
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

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: Engine = create_engine(url)
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

    def reserve(self) -> int:
        """A key taken now, as a transaction that begins now takes it, for a row written later."""
        ident, self.next_id = self.next_id, self.next_id + 1
        return ident

    def write(
        self,
        case_no: str,
        code: str,
        *,
        at: datetime | None = None,
        ident: int | None = None,
        **values: Any,
    ) -> int:
        """Append a status row, as the approval system does at each step. ``at`` (default: the
        clock's next second) and ``ident`` (default: the next key) are the row's updated_at
        and key, as a transaction that began earlier and commits only now would write them."""
        ident = self.reserve() if ident is None else ident
        stamp = self.tick() if at is None else at
        with self.engine.begin() as connection:
            connection.execute(
                insert(self.status).values(
                    id=ident, case_no=case_no, status_code=code, updated_at=stamp, **values
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


def write_config(tmp_path: Path, kit: HubKit, db_url: str, **hub: Any) -> Path:
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
url = "{db_url}"
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


@contextmanager
def open_world(tmp_path: Path, hub_kit: HubKit, db_url: str = "") -> Iterator[World]:
    """A hub with the department's item, the department's database (``db_url``, default a
    SQLite file) and its connector TOML."""
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
    db = DepartmentDb(db_url or f"sqlite:///{tmp_path / 'department.db'}")
    made = World(hub_kit, db, write_config(tmp_path, hub_kit, db.url), hub_kit.client("platform"))
    try:
        yield made
    finally:
        for connector in made.opened:
            connector.close()
        db.close()
