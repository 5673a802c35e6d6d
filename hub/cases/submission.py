"""SubmitCase and LookupCase as pure deciders (提交办件, 按预受理编号查询), over rows read once.

A prepared case becomes at most one case. Submitting it again is idempotent: the same
content (the CaseSubmission without its header — a retry is a new signed message) answers
the first receipt with ``duplicate`` set and writes nothing, so a platform whose answer was
lost simply retries; other content is refused ``STATUS_TRANSITION`` and names the case it
became. ``decide_lookup`` answers the same receipt to the platform that prepared it.
Like ``hub.cases.rules``: no database, no clock, no randomness here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from xhub.certificates_store.model import CertificateDataError, validate_holder
from xhub.hub.binding.rules import (
    BoundCase,
    Refusal,
    RuleError,
    check_binding,
    item_of,
    unbound,
)
from xhub.hub.cases.limits import check_event
from xhub.hub.cases.rules import DISPATCH, NewEvent, References, Request, concerning, referenced
from xhub.protocol.stages import Stage
from xhub.v1 import case_pb2, envelope_pb2


@dataclass(frozen=True)
class SubmittedCase:
    """The case a prepared case already became: its number, its platform's signed
    submission (byte for byte) and its departments in dispatch order."""

    case_number: str
    prepared_case_id: str
    platform_member_id: str
    applicant_code: str
    submission: bytes
    departments: tuple[str, ...]

    def receipt(self, *, duplicate: bool) -> case_pb2.CaseReceipt:
        return case_pb2.CaseReceipt(
            case_number=self.case_number,
            departments=self.departments,
            duplicate=duplicate,
            prepared_case_id=self.prepared_case_id,
        )


@dataclass(frozen=True)
class SubmitRows:
    case: BoundCase | None  # the prepared case (hub.binding.store)
    submitted: SubmittedCase | None = None  # what it already became, if anything
    registered: frozenset[str] = frozenset()  # which of the item's departments are members
    references: References = field(default_factory=References)


@dataclass(frozen=True)
class NewCase:
    """A submitted case to insert (``CaseRow``), dispatched to ``departments``."""

    case_number: str
    prepared_case_id: str
    item_code: str
    platform_member_id: str
    applicant_code: str
    submission: bytes
    dispatch: bytes
    time_limit_days: int
    submitted_at: datetime
    departments: tuple[str, ...]


@dataclass(frozen=True)
class SubmitDecision:
    """A new case to write, or (``case`` None) the first receipt of a repeated submission."""

    receipt: case_pb2.CaseReceipt
    case: NewCase | None
    events: tuple[NewEvent, ...]
    subject: str
    case_number: str  # the case the call concerns (its audit entry's case id)


def _content(submission: case_pb2.CaseSubmission) -> bytes:
    """What a submission asks for, without its header (each retry has a new one)."""
    bare = case_pb2.CaseSubmission()
    bare.CopyFrom(submission)
    bare.ClearField("header")
    return bare.SerializeToString(deterministic=True)


def _repeated(
    submitted: SubmittedCase, submission: case_pb2.CaseSubmission, subject: str
) -> SubmitDecision:
    """The same prepared case again: the first receipt if it asks for the same, else refused."""
    first = case_pb2.CaseSubmission.FromString(
        envelope_pb2.Envelope.FromString(submitted.submission).payload
    )
    if _content(first) != _content(submission):
        raise RuleError(
            Refusal.STATUS_TRANSITION,
            f"this prepared case was already submitted as case {submitted.case_number}, "
            "with other content",
            case_id=submitted.prepared_case_id,
            case_number=submitted.case_number,
        )
    receipt = submitted.receipt(duplicate=True)
    return SubmitDecision(receipt, None, (), subject, submitted.case_number)


def check_signed_case(prepared: BoundCase, submission: case_pb2.CaseSubmission) -> None:
    """The platform signs which case it submits (applicant, its code type, item, prepared
    case): each must be the prepared case's, so a department can check them end to end."""
    signed = {
        "prepared_case_id": submission.prepared_case_id,
        "applicant_code": submission.applicant_code,
        "item_code": submission.item_code,
    }
    stored = {
        "prepared_case_id": prepared.case_id,
        "applicant_code": prepared.applicant_code,
        "item_code": prepared.item_code,
    }
    for name, value in signed.items():
        if value != stored[name]:
            raise unbound(f"the signed {name} differs from the prepared case's", field=name)
    try:
        validate_holder(submission.applicant_code, submission.applicant_code_type)
    except CertificateDataError:
        raise RuleError(
            Refusal.MALFORMED,
            "applicant_code_type does not fit the applicant code",
            field="applicant_code_type",
        ) from None


def decide_submit(
    rows: SubmitRows,
    submission: case_pb2.CaseSubmission,
    request: Request,
    *,
    case_id: str,
    purpose: str,
    case_number: str,
) -> SubmitDecision:
    """Submit a prepared case once, to every (registered) handling department."""
    prepared = check_binding(
        rows.case, case_id=case_id, caller=request.author, purpose=purpose, now=request.now
    )
    with concerning(prepared.applicant_code):
        check_signed_case(prepared, submission)
        if rows.submitted is not None:
            return _repeated(rows.submitted, submission, prepared.applicant_code)
        item = item_of(prepared)
        departments = tuple(item.departments)
        if not departments:
            raise RuleError(
                Refusal.PRECONDITION,
                f"item {item.code} names no handling department",
                item_code=item.code,
            )
        if missing := [d for d in departments if d not in rows.registered]:
            raise RuleError(
                Refusal.PRECONDITION,
                f"handling department(s) {', '.join(missing)} are not registered",
                item_code=item.code,
            )
        certificates, materials = referenced(
            rows.references, prepared.holders, prepared.applicant_code, prepared.case_id
        )
        dispatched = case_pb2.DispatchedCase(
            case_number=case_number,
            item=item,
            applicant_code=prepared.applicant_code,
            applicant_name=submission.applicant_name,
            certificates=certificates,
            materials=materials,
            form=dict(submission.form),
            submission=request.origin,
            platform=request.author,
            stage=case_pb2.CASE_STAGE_SUBMITTED,
        )
        dispatched.submitted_at.FromDatetime(request.now)
        check_event(dispatched)
    case = NewCase(
        case_number=case_number,
        prepared_case_id=prepared.case_id,
        item_code=item.code,
        platform_member_id=request.author,
        applicant_code=prepared.applicant_code,
        submission=request.origin.SerializeToString(),
        dispatch=dispatched.SerializeToString(),
        time_limit_days=item.time_limit_days or 1,
        submitted_at=request.now,
        departments=departments,
    )
    events = tuple(
        NewEvent(DISPATCH, d, d, None, Stage.SUBMITTED, Stage.SUBMITTED, dispatched)
        for d in departments
    )
    receipt = case_pb2.CaseReceipt(
        case_number=case_number, departments=departments, prepared_case_id=prepared.case_id
    )
    return SubmitDecision(receipt, case, events, prepared.applicant_code, case_number)


def decide_lookup(
    prepared: BoundCase | None, submitted: SubmittedCase | None, *, case_id: str, caller: str
) -> case_pb2.CaseReceipt:
    """The receipt of the case ``case_id`` became, for the platform that prepared it (an
    expired prepared case is still found: a lost answer may be looked up late)."""
    if prepared is None:
        raise RuleError(Refusal.NOT_FOUND, "no such prepared case", prepared_case_id=case_id[:64])
    with concerning(prepared.applicant_code):
        if prepared.platform_member_id != caller:
            raise RuleError(
                Refusal.NOT_YOUR_CASE,
                "this case was prepared by another platform",
                prepared_case_id=prepared.case_id,
            )
        if submitted is None:
            raise RuleError(
                Refusal.NOT_FOUND,
                "this prepared case was not submitted",
                prepared_case_id=prepared.case_id,
            )
    return submitted.receipt(duplicate=False)
