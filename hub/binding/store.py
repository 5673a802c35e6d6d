"""The one read of purpose binding: the prepared case and its item, in one statement."""

from __future__ import annotations

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from xhub.hub.binding.rules import BoundCase
from xhub.hub.core.db import ItemRow, PreparedCaseRow, table_of
from xhub.v1 import intake_pb2

_prepared = table_of(PreparedCaseRow)
_items = table_of(ItemRow)
# Built once and read without ORM loading: every pull, download and submission runs it.
_BOUND_CASE = (
    select(
        _prepared.c.case_id,
        _prepared.c.item_code,
        _prepared.c.platform_member_id,
        _prepared.c.applicant_code,
        _prepared.c.legal_representative_code,
        _prepared.c.purpose,
        _prepared.c.expires_at,
        _items.c.item,
    )
    .select_from(_prepared.outerjoin(_items, _items.c.code == _prepared.c.item_code))
    .where(_prepared.c.case_id == bindparam("case_id"))
)


def read_bound_case(session: Session, case_id: str) -> BoundCase | None:
    """The prepared case ``case_id`` names, or None (also when no case_id is given)."""
    if not case_id:
        return None
    row = session.execute(_BOUND_CASE, {"case_id": case_id}).first()
    if row is None:
        return None
    return BoundCase(
        case_id=row.case_id,
        item_code=row.item_code,
        platform_member_id=row.platform_member_id,
        applicant_code=row.applicant_code,
        legal_representative_code=row.legal_representative_code,
        purpose=row.purpose,
        expires_at=row.expires_at,
        item=intake_pb2.Item.FromString(row.item) if row.item is not None else None,
    )
