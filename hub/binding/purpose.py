"""Purpose binding (用途绑定): the prepared case a certificate pull or material download
is bound to. Shared by intake, materials and cases, so it sits below all three."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import bindparam, select

from xhub.hub.core.db import PreparedCaseRow, table_of
from xhub.hub.core.runtime import Call
from xhub.protocol.errors import MalformedError, PermissionDeniedError
from xhub.v1 import envelope_pb2 as R


def deny_unbound(message: str, **metadata: str) -> PermissionDeniedError:
    return PermissionDeniedError(
        message, reason=R.ERROR_REASON_PURPOSE_NOT_BOUND, metadata=metadata
    )


@dataclass(frozen=True)
class BoundCase:
    """The prepared case a request is bound to (read without ORM loading: every pull)."""

    case_id: str
    item_code: str
    platform_member_id: str
    applicant_code: str
    legal_representative_code: str
    purpose: str
    expires_at: datetime


_prepared = table_of(PreparedCaseRow)
_BOUND_CASE = select(*(_prepared.c[name] for name in BoundCase.__dataclass_fields__)).where(
    _prepared.c.case_id == bindparam("case_id")
)


def bound_case(call: Call[Any]) -> BoundCase:
    """Purpose binding shared by certificate pulls and material reuse (steps 1–2)."""
    # 1. The request names a prepared case, and the caller is the platform that prepared it.
    row = (
        call.session.execute(_BOUND_CASE, {"case_id": call.header.case_id}).first()
        if call.header.case_id
        else None
    )
    case = BoundCase(*row) if row is not None else None
    if case is None:
        raise deny_unbound(
            "the request names no prepared case (case_id)", case_id=call.header.case_id[:64]
        )
    if case.platform_member_id != call.caller.member_id:
        raise deny_unbound("this case was prepared by another platform", case_id=case.case_id)
    if case.expires_at <= datetime.now(UTC):
        raise deny_unbound("the prepared case has expired; prepare it again", case_id=case.case_id)
    # 2. The purpose is the one the case was prepared for.
    if not call.header.purpose.strip():
        raise MalformedError("a purpose (用证事由) is required", metadata={"field": "purpose"})
    if call.header.purpose != case.purpose:
        raise deny_unbound("the purpose differs from the prepared case's", case_id=case.case_id)
    return case
