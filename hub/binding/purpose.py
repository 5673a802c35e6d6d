"""Purpose binding (用途绑定) for the servicers: the prepared case a certificate pull, a
material download or a submission is bound to — one read (``store``), then the pure check
(``rules``). Shared by intake, materials and cases, so it sits below all three; it also maps
the pure rules' ``RuleError`` to the refusal each servicer answers with."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from google.protobuf.message import Message

from xhub.hub.binding.rules import (
    BoundCase,
    Refusal,
    ReviewedCase,
    RuleError,
    check_binding,
    check_review,
)
from xhub.hub.binding.store import read_bound_case, read_reviewed_case
from xhub.hub.core.runtime import Call
from xhub.protocol.errors import (
    FailedPreconditionError,
    MalformedError,
    NotFoundError,
    PermissionDeniedError,
    RefusedError,
)
from xhub.v1 import envelope_pb2 as R

__all__ = [
    "BoundCase",
    "ReviewedCase",
    "bound_case",
    "deny_unbound",
    "refusal",
    "refusing",
    "reviewed_case",
]

M = TypeVar("M", bound=Message)


def deny_unbound(message: str, **metadata: str) -> PermissionDeniedError:
    return PermissionDeniedError(
        message, reason=R.ERROR_REASON_PURPOSE_NOT_BOUND, metadata=metadata
    )


def refusal(error: RuleError) -> RefusedError:
    """The refusal a broken pure rule is answered with (the reasons clients see)."""
    message, metadata = error.message, dict(error.metadata)
    match error.refusal:
        case Refusal.MALFORMED:
            return MalformedError(message, metadata=metadata)
        case Refusal.NOT_FOUND:
            return NotFoundError(message, metadata=metadata)
        case Refusal.UNBOUND:
            return deny_unbound(message, **metadata)
        case Refusal.NOT_YOUR_CASE:
            return PermissionDeniedError(
                message, reason=R.ERROR_REASON_NOT_YOUR_CASE, metadata=metadata
            )
        case Refusal.STATUS_TRANSITION:
            return FailedPreconditionError(
                message, reason=R.ERROR_REASON_STATUS_TRANSITION, metadata=metadata
            )
        case Refusal.CASE_CLOSED:
            return FailedPreconditionError(
                message, reason=R.ERROR_REASON_CASE_CLOSED, metadata=metadata
            )
        case Refusal.PRECONDITION:
            return FailedPreconditionError(message, metadata=metadata)


def refusing(handler: Callable[[Call[M]], Message]) -> Callable[[Call[M]], Message]:
    """A handler whose pure rules' ``RuleError`` reaches the caller as its refusal."""

    def run(call: Call[M]) -> Message:
        try:
            return handler(call)
        except RuleError as exc:
            if exc.subject:
                call.audit.subject = exc.subject
            raise refusal(exc) from exc

    return run


def bound_case(call: Call[Any]) -> BoundCase:
    """Purpose binding shared by certificate pulls and material reuse (steps 1–2)."""
    try:
        return check_binding(
            read_bound_case(call.session, call.header.case_id),
            case_id=call.header.case_id,
            caller=call.caller.member_id,
            purpose=call.header.purpose,
            now=datetime.now(UTC),
        )
    except RuleError as exc:
        raise refusal(exc) from exc


def reviewed_case(call: Call[Any]) -> ReviewedCase:
    """A department reading the case it reviews (部门调阅): the case the header names
    (``case_id`` is the case number), dispatched to the caller and open there; the call is
    audited under the case's applicant, as a platform's pull is."""
    case = read_reviewed_case(
        session=call.session, case_number=call.header.case_id, department=call.caller.member_id
    )
    if case is not None:
        call.audit.subject = case.applicant_code
    try:
        return check_review(case, case_number=call.header.case_id)
    except RuleError as exc:
        raise refusal(exc) from exc
