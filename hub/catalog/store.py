"""The item catalogue (事项目录): storage of items and their required materials."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from xhub.hub.core.db import ItemRow
from xhub.protocol.errors import NotFoundError
from xhub.v1 import intake_pb2

# Item, material and material-type codes: one pattern for the catalogue file and uploads.
CODE_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z_.\-]{0,63}$")


def put_items(session: Session, items: Iterable[intake_pb2.Item]) -> int:
    """Insert or replace items (caller validated them and commits)."""
    now = datetime.now(UTC)
    count = 0
    for item in items:
        row = session.get(ItemRow, item.code)
        if row is None:
            session.add(
                ItemRow(
                    code=item.code, name=item.name, item=item.SerializeToString(), updated_at=now
                )
            )
        else:
            row.name, row.item, row.updated_at = item.name, item.SerializeToString(), now
        count += 1
    session.flush()
    return count


# Built once: every checklist, pull and submission reads its item.
_ITEM_BYTES = select(ItemRow.item).where(ItemRow.code == bindparam("code"))


def get_item(session: Session, code: str) -> intake_pb2.Item:
    data = session.execute(_ITEM_BYTES, {"code": code}).scalar()
    if data is None:
        raise NotFoundError(
            f"no item {code[:64]!r} in the catalogue", metadata={"item_code": code[:64]}
        )
    item = intake_pb2.Item()
    item.ParseFromString(data)
    return item
