"""The one read of purpose binding: the prepared case and its item, in one statement (a
platform's pulls), or the case a department reviews with its stage there (部门调阅)."""

from __future__ import annotations

from sqlalchemy import and_, bindparam, select
from sqlalchemy.orm import Session

from xhub.hub.binding.rules import BoundCase, ReviewedCase
from xhub.hub.core.db import CaseDepartmentRow, CaseRow, ItemRow, PreparedCaseRow, table_of
from xhub.protocol.stages import Stage
from xhub.v1 import case_pb2, envelope_pb2, intake_pb2

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

_cases = table_of(CaseRow)
_at = table_of(CaseDepartmentRow)
# The case with the calling department's row (none when it was not dispatched there).
_REVIEWED_CASE = (
    select(_cases.c.case_number, _cases.c.applicant_code, _cases.c.submission, _cases.c.dispatch)
    .add_columns(_at.c.stage)
    .select_from(
        _cases.outerjoin(
            _at,
            and_(
                _at.c.case_number == _cases.c.case_number,
                _at.c.department == bindparam("department"),
            ),
        )
    )
    .where(_cases.c.case_number == bindparam("number"))
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


def _payload(envelope: bytes | envelope_pb2.Envelope) -> bytes:
    if isinstance(envelope, bytes):
        envelope = envelope_pb2.Envelope.FromString(envelope)
    return envelope.payload


def read_reviewed_case(session: Session, case_number: str, department: str) -> ReviewedCase | None:
    """The case ``case_number`` as ``department`` may read it, or None (no such case).

    Its references are the ones the platform signed — its submission's, then each
    resubmission's (stored byte for byte, verified when the hub admitted them) — never
    the hub's own copy of them, nor anything else of the applicant."""
    if not case_number:
        return None
    row = session.execute(_REVIEWED_CASE, {"number": case_number, "department": department}).first()
    if row is None:
        return None
    submission = case_pb2.CaseSubmission.FromString(_payload(bytes(row.submission)))
    certificates = list(submission.certificate_identifiers)
    materials = list(submission.material_ids)
    for envelope in case_pb2.DispatchedCase.FromString(bytes(row.dispatch)).resubmissions:
        resubmission = case_pb2.CaseResubmission.FromString(_payload(envelope))
        certificates.extend(resubmission.certificate_identifiers)
        materials.extend(resubmission.material_ids)
    return ReviewedCase(
        case_number=row.case_number,
        applicant_code=row.applicant_code,
        stage=Stage(row.stage) if row.stage is not None else None,
        certificate_identifiers=tuple(certificates),
        material_ids=tuple(materials),
    )
