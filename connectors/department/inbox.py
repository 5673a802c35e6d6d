"""The inbox table (收件箱) in the department's own database: dispatched cases, by case number.

The department's system reads it and never needs to know about xhub. A case is upserted by
case number: a resubmission (after 补正) updates it, a withdrawal (撤回) sets ``withdrawn``,
and an event the inbox already holds (a redelivery) changes nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final, Literal

from google.protobuf.json_format import MessageToDict
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    insert,
    inspect,
    select,
    update,
)

from xhub.connectors.department.config import DepartmentConfigError
from xhub.v1 import case_pb2, material_pb2

log = logging.getLogger("xhub.connector.department")

StoreOutcome = Literal["new", "updated", "withdrawn", "duplicate"]


def inbox_table(name: str, metadata: MetaData) -> Table:
    """The inbox (收件箱) the department's system reads; times are UTC without zone."""
    return Table(
        name,
        metadata,
        Column("case_number", String(40), primary_key=True),  # 办件编号
        Column("item_code", String(64), nullable=False),  # 事项编码
        Column("item_name", String(200), nullable=False),  # 事项名称
        Column("time_limit_days", Integer, nullable=False),  # 承诺时限 (工作日)
        Column("applicant_code", String(64), nullable=False),  # 申请人代码
        Column("applicant_name", String(200), nullable=False),  # 申请人名称
        Column("form_json", Text, nullable=False),  # 申请表信息
        Column("certificates_json", Text, nullable=False),  # 证照引用
        Column("materials_json", Text, nullable=False),  # 材料引用
        Column("platform", String(128), nullable=False),  # 受理平台
        Column("submitted_at", DateTime, nullable=False),  # 提交时间
        Column("received_at", DateTime, nullable=False),  # 接收时间
        Column("updated_at", DateTime, nullable=False),  # 最后更新 (poll this)
        Column("withdrawn", Integer, nullable=False),  # 撤回: 1
        Column("withdrawn_at", DateTime),
        Column("hub_cursor", BigInteger, nullable=False),  # last dispatch applied
    )


INBOX_COLUMNS: Final = tuple(c.name for c in inbox_table("inbox", MetaData()).columns)


def open_inbox(department: Engine, name: str) -> Table:
    """The inbox table, created if missing; raises DepartmentConfigError if it lacks columns."""
    if not inspect(department).has_table(name):
        metadata = MetaData()
        inbox_table(name, metadata)
        metadata.create_all(department)
        log.info("created the inbox table (收件箱) %s", name)
    table = Table(name, MetaData(), autoload_with=department)
    missing = [c for c in INBOX_COLUMNS if c not in table.c]
    if missing:
        raise DepartmentConfigError(f"inbox table {name!r} lacks: {', '.join(missing)}")
    return table


def _utc_naive(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None)


def _refs_json(refs: Sequence[Any]) -> str:
    items = []
    for ref in refs:
        item = MessageToDict(ref, preserving_proto_field_name=True)
        if isinstance(ref, material_pb2.MaterialRef):
            item["sha256"] = ref.sha256.hex()  # hex, as the department would compute it
        items.append(item)
    return json.dumps(items, ensure_ascii=False, sort_keys=True)


def store_case(department: Engine, table: Table, case: case_pb2.DispatchedCase) -> StoreOutcome:
    """Upsert one dispatched case in one transaction; says what it did."""
    withdrawn = case.stage == case_pb2.CASE_STAGE_WITHDRAWN
    now = _utc_naive(datetime.now(UTC))
    values = {
        "item_code": case.item.code,
        "item_name": case.item.name,
        "time_limit_days": int(case.item.time_limit_days),
        "applicant_code": case.applicant_code,
        "applicant_name": case.applicant_name,
        "form_json": json.dumps(dict(case.form), ensure_ascii=False, sort_keys=True),
        "certificates_json": _refs_json(case.certificates),
        "materials_json": _refs_json(case.materials),
        "platform": case.platform,
        "submitted_at": _utc_naive(case.submitted_at.ToDatetime(tzinfo=UTC)),
        "hub_cursor": int(case.cursor),
    }
    with department.begin() as connection:
        row = connection.execute(
            select(table.c.hub_cursor, table.c.withdrawn).where(
                table.c.case_number == case.case_number
            )
        ).first()
        if row is None:
            connection.execute(
                insert(table).values(
                    case_number=case.case_number,
                    received_at=now,
                    updated_at=now,
                    withdrawn=int(withdrawn),
                    withdrawn_at=now if withdrawn else None,
                    **values,
                )
            )
            return "withdrawn" if withdrawn else "new"
        if case.cursor <= int(row.hub_cursor or 0):
            return "duplicate"  # an event this inbox already holds (redelivery)
        changes: dict[str, Any] = {"hub_cursor": int(case.cursor)}
        outcome: StoreOutcome
        if row.withdrawn:
            outcome = "duplicate"  # 撤回 is final: never un-withdraw
        elif withdrawn:
            changes.update(withdrawn=1, withdrawn_at=now, updated_at=now)
            outcome = "withdrawn"
        else:
            changes.update(values, updated_at=now)
            outcome = "updated"
        connection.execute(
            update(table).where(table.c.case_number == case.case_number).values(**changes)
        )
        return outcome
