"""The case rules (办件规则) as pure deciders: one function per decision, over rows read once.

``hub.cases.store`` reads everything a decision needs (under the case lock) into the frozen
row types below; ``decide_push`` / ``decide_withdraw`` / ``decide_resubmit`` (and
``hub.cases.submission.decide_submit``) check every rule in a fixed order and return what to
write, or raise a ``RuleError`` that the servicer maps to its refusal. No database, no
clock, no randomness here (``now`` and the new case number are arguments), so the tables in
``tests/test_case_rules.py`` test every rule without a hub. The stage machine itself is
``xhub.protocol.stages``; working days are ``hub.cases.calendar``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime

from google.protobuf.message import Message

from xhub.hub.binding.rules import Refusal, RuleError, unbound
from xhub.hub.cases import calendar as workdays
from xhub.hub.cases.limits import MAX_RESUBMISSIONS, check_event
from xhub.protocol.stages import Actor, IllegalTransition, Stage, next_stage, overall_status
from xhub.v1 import case_pb2, certificate_pb2, envelope_pb2, material_pb2

DISPATCH, STATUS, SUPERVISION = "dispatch", "status", "supervision"  # case_events kinds
OPEN_STAGES = (Stage.ACCEPTED, Stage.UNDER_REVIEW, Stage.APPROVED)
"""Stages whose time limit is running (supervised)."""

# -- rows, as the store reads them ---------------------------------------------------------


@dataclass(frozen=True)
class AtDepartment:
    """The case at one handling department."""

    department: str
    stage: Stage
    accepted_on: str = ""  # ISO date, "" until accepted
    sequence: int = 0  # the department's last push's sequence (回传序号)


@dataclass(frozen=True)
class CaseState:
    """A submitted case and its stage at every handling department."""

    case_number: str
    platform_member_id: str
    applicant_code: str
    overall: Stage
    time_limit_days: int
    submitted_at: datetime
    departments: tuple[AtDepartment, ...]
    dispatch: bytes = b""  # the DispatchedCase (read for the platform's actions only)
    legal_representative_code: str = ""  # of its prepared case (platform's actions only)

    def at(self, department: str) -> AtDepartment | None:
        return next((d for d in self.departments if d.department == department), None)


@dataclass(frozen=True)
class EarlierEvent:
    """The event an author already recorded under the same event id."""

    case_number: str
    stage: int
    overall: int


@dataclass(frozen=True)
class IssuedCertificate:
    """Who issued a certificate, to whom (the one a completion names)."""

    issuer_member_id: str
    holder_code: str


@dataclass(frozen=True)
class CertificateReference:
    """A certificate a submission names: None when the library has no such identifier."""

    holder_code: str
    ref: certificate_pb2.CertificateRef


@dataclass(frozen=True)
class MaterialReference:
    """A material a submission names, with its id (None when there is no such material)."""

    material_id: str
    row: tuple[str, material_pb2.MaterialRef] | None  # (applicant code, reference)


@dataclass(frozen=True)
class References:
    certificates: tuple[CertificateReference | None, ...] = ()
    materials: tuple[MaterialReference, ...] = ()


@dataclass(frozen=True)
class PushRows:
    earlier: EarlierEvent | None
    case: CaseState | None
    certificate: IssuedCertificate | None = None  # the one the push names, if any


@dataclass(frozen=True)
class PlatformRows:
    """What a withdrawal or a resubmission reads."""

    earlier: EarlierEvent | None
    case: CaseState | None
    references: References = References()


# -- decisions -----------------------------------------------------------------------------


@dataclass(frozen=True)
class StageChange:
    """A department's new stage; ``accepted_on``/``deadline`` set on its first acceptance."""

    department: str
    stage: Stage
    accepted_on: str = ""
    deadline: str = ""
    sequence: int = 0  # a department push's sequence, to record (0: leave it)


@dataclass(frozen=True)
class NewEvent:
    """A row of ``case_events`` (what a stream will deliver to ``recipient``)."""

    kind: str
    recipient: str
    department: str
    event_id: str | None
    stage: Stage
    overall: Stage
    body: Message


@dataclass(frozen=True)
class CaseDecision:
    """What a push, withdrawal or resubmission writes (nothing, for a duplicate)."""

    result: case_pb2.StatusPushResult
    changes: tuple[StageChange, ...] = ()
    overall: Stage | None = None  # the case's overall status, when it is to be written
    dispatch: bytes | None = None  # the case's new DispatchedCase (resubmission)
    events: tuple[NewEvent, ...] = ()
    subject: str = ""  # whom the call concerns (the audit entry's subject)


@dataclass(frozen=True)
class Request:
    """Who sent a case request, and when it is decided."""

    author: str
    origin: envelope_pb2.Envelope  # the author's own signed message
    now: datetime


# -- shared rules --------------------------------------------------------------------------


@contextmanager
def concerning(subject: str) -> Iterator[None]:
    """Refusals raised inside concern ``subject`` (it goes into their audit entry)."""
    try:
        yield
    except RuleError as exc:
        exc.subject = exc.subject or subject
        raise


def check_event_id(event_id: str) -> None:
    if not event_id or len(event_id) > 64:
        raise RuleError(Refusal.MALFORMED, "event_id must be 1–64 characters", field="event_id")


def duplicate(earlier: EarlierEvent | None, case_number: str) -> CaseDecision | None:
    """A repeated event id returns the first result and adds nothing."""
    if earlier is None:
        return None
    if earlier.case_number != case_number:
        raise RuleError(
            Refusal.MALFORMED, "this event_id was already used for another case", field="event_id"
        )
    result = case_pb2.StatusPushResult(
        case_number=earlier.case_number,
        stage=earlier.stage,  # type: ignore[arg-type]
        overall=earlier.overall,  # type: ignore[arg-type]
        duplicate=True,
    )
    return CaseDecision(result=result)


def existing(case: CaseState | None, case_number: str) -> CaseState:
    if case is None:
        raise RuleError(
            Refusal.NOT_FOUND, f"no case {case_number[:40]!r}", case_number=case_number[:40]
        )
    return case


def platforms_own(case: CaseState | None, case_number: str, platform: str) -> CaseState:
    """The case exists and ``platform`` submitted it."""
    case = existing(case, case_number)
    if case.platform_member_id != platform:
        raise RuleError(
            Refusal.NOT_YOUR_CASE, "another platform's case", case_number=case.case_number
        )
    return case


def moved(case: CaseState, at: AtDepartment, proposed: Stage, actor: Actor, now: datetime) -> Stage:
    """The stage machine's verdict, as a rule refusal naming the current stage."""
    try:
        return next_stage(at.stage, proposed, actor, submitted_at=case.submitted_at, now=now)
    except IllegalTransition as exc:
        raise RuleError(
            Refusal.STATUS_TRANSITION,
            str(exc),
            current_stage=exc.current.name,
            code=exc.reason,
        ) from exc


def referenced(
    references: References, holders: frozenset[str], applicant: str, case_id: str
) -> tuple[list[certificate_pb2.CertificateRef], list[material_pb2.MaterialRef]]:
    """The certificates and materials a submission names: the applicant's own only."""
    certificates = []
    for certificate in references.certificates:
        if certificate is None or certificate.holder_code not in holders:
            raise unbound("a referenced certificate is not the applicant's", case_id=case_id)
        certificates.append(certificate.ref)
    materials = []
    for material in references.materials:
        if material.row is None:
            raise RuleError(
                Refusal.NOT_FOUND, "no such material", material_id=material.material_id[:40]
            )
        owner, ref = material.row
        if owner != applicant:
            raise unbound("a referenced material belongs to another applicant", case_id=case_id)
        materials.append(ref)
    return certificates, materials


def status_event(
    case_number: str,
    department: str,
    stage: Stage,
    overall: Stage,
    request: Request,
    event_id: str,
    *,
    note: str,
    missing_items: Iterable[str] = (),
    certificate_identifier: str = "",
) -> case_pb2.StatusEvent:
    event = case_pb2.StatusEvent(
        case_number=case_number,
        department=department,
        stage=int(stage),  # type: ignore[arg-type]
        overall=int(overall),  # type: ignore[arg-type]
        event_id=event_id,
        note=note,
        missing_items=missing_items,
        certificate_identifier=certificate_identifier,
        origin=request.origin,
    )
    event.recorded_at.FromDatetime(request.now)
    return event


def _result(case_number: str, stage: Stage, overall: Stage) -> case_pb2.StatusPushResult:
    return case_pb2.StatusPushResult(
        case_number=case_number,
        stage=int(stage),  # type: ignore[arg-type]
        overall=int(overall),  # type: ignore[arg-type]
    )


# -- PushStatus ----------------------------------------------------------------------------


def decide_push(
    rows: PushRows,
    push: case_pb2.StatusPush,
    request: Request,
    calendar: workdays.WorkCalendar,
) -> CaseDecision:
    """A handling department reports the case's next stage at its desk."""
    check_event_id(push.event_id)
    if (first := duplicate(rows.earlier, push.case_number)) is not None:
        return first
    case = existing(rows.case, push.case_number)
    department = request.author
    at = case.at(department)
    if at is None:
        raise RuleError(
            Refusal.NOT_YOUR_CASE,
            "this case was not dispatched to you",
            case_number=case.case_number,
        )
    if push.sequence != at.sequence + 1:
        raise RuleError(
            Refusal.STATUS_TRANSITION,
            f"push sequence {push.sequence} does not follow {at.sequence}: "
            f"the next push of this case is number {at.sequence + 1}",
            field="sequence",
            expected_sequence=str(at.sequence + 1),
            case_number=case.case_number,
        )
    try:
        proposed = Stage(push.stage)
    except ValueError as exc:
        raise RuleError(Refusal.MALFORMED, "unknown stage", field="stage") from exc
    new = moved(case, at, proposed, Actor.DEPARTMENT, request.now)
    if new == Stage.SUPPLEMENT_REQUIRED and not push.missing_items:
        raise RuleError(
            Refusal.MALFORMED,
            "补正 (supplement required) must list the missing items",
            field="missing_items",
        )
    if push.certificate_identifier:
        issued = rows.certificate
        if (
            new != Stage.COMPLETED
            or issued is None
            or issued.issuer_member_id != department
            or issued.holder_code != case.applicant_code
        ):
            raise RuleError(
                Refusal.MALFORMED,
                "certificate_identifier: only on COMPLETED, naming a certificate you "
                "issued to the applicant",
                field="certificate_identifier",
            )
    change = StageChange(department, new, sequence=push.sequence)
    if new == Stage.ACCEPTED and not at.accepted_on:
        accepted = request.now.date()
        limit = workdays.deadline(accepted, case.time_limit_days, calendar)
        change = StageChange(
            department, new, accepted.isoformat(), limit.isoformat(), push.sequence
        )
    overall = overall_status(new if d is at else d.stage for d in case.departments)
    event = status_event(
        case.case_number,
        department,
        new,
        overall,
        request,
        push.event_id,
        note=push.note,
        missing_items=push.missing_items,
        certificate_identifier=push.certificate_identifier,
    )
    return CaseDecision(
        result=_result(case.case_number, new, overall),
        changes=(change,),
        overall=overall if overall != case.overall else None,
        events=(
            NewEvent(
                STATUS, case.platform_member_id, department, push.event_id, new, overall, event
            ),
        ),
    )


# -- WithdrawCase --------------------------------------------------------------------------


def decide_withdraw(
    rows: PlatformRows, withdrawal: case_pb2.CaseWithdrawal, request: Request
) -> CaseDecision:
    """撤回: all or nothing across departments; each department's stream learns of it."""
    check_event_id(withdrawal.event_id)
    if (first := duplicate(rows.earlier, withdrawal.case_number)) is not None:
        return first
    case = platforms_own(rows.case, withdrawal.case_number, request.author)
    for at in case.departments:  # check all first: withdrawal is all or nothing
        moved(case, at, Stage.WITHDRAWN, Actor.PLATFORM, request.now)
    withdrawn = case_pb2.DispatchedCase.FromString(case.dispatch)
    withdrawn.stage = case_pb2.CASE_STAGE_WITHDRAWN
    gone = Stage.WITHDRAWN
    events: list[NewEvent] = []
    for index, at in enumerate(case.departments):
        event_id = withdrawal.event_id if index == 0 else None
        status = status_event(
            case.case_number,
            at.department,
            gone,
            gone,
            request,
            withdrawal.event_id,
            note=withdrawal.reason,
        )
        # The platform's stream and each department's stream both learn of it.
        events.append(
            NewEvent(STATUS, case.platform_member_id, at.department, event_id, gone, gone, status)
        )
        events.append(NewEvent(DISPATCH, at.department, at.department, None, gone, gone, withdrawn))
    return CaseDecision(
        result=_result(case.case_number, gone, gone),
        changes=tuple(StageChange(at.department, gone) for at in case.departments),
        overall=gone,
        events=tuple(events),
    )


# -- ResubmitCase --------------------------------------------------------------------------


def decide_resubmit(
    rows: PlatformRows, resubmission: case_pb2.CaseResubmission, request: Request
) -> CaseDecision:
    """补正后重新提交: the departments that asked get the case again, at SUBMITTED."""
    check_event_id(resubmission.event_id)
    if (first := duplicate(rows.earlier, resubmission.case_number)) is not None:
        return first
    case = platforms_own(rows.case, resubmission.case_number, request.author)
    with concerning(case.applicant_code):
        asking = [d for d in case.departments if d.stage == Stage.SUPPLEMENT_REQUIRED]
        if not asking:
            raise RuleError(
                Refusal.STATUS_TRANSITION,
                f"no department asked for a supplement; the case is at {case.overall.label}",
                current_stage=case.overall.name,
            )
        holders = frozenset({case.applicant_code, case.legal_representative_code} - {""})
        certificates, materials = referenced(
            rows.references, holders, case.applicant_code, case.case_number
        )
        for at in asking:
            moved(case, at, Stage.SUBMITTED, Actor.PLATFORM, request.now)
        dispatched = case_pb2.DispatchedCase.FromString(case.dispatch)
        if len(dispatched.resubmissions) >= MAX_RESUBMISSIONS:
            raise RuleError(
                Refusal.PRECONDITION,
                f"this case was resubmitted {MAX_RESUBMISSIONS} times, the most a case takes",
                field="resubmissions",
                limit=str(MAX_RESUBMISSIONS),
            )
        dispatched.certificates.extend(certificates)
        dispatched.materials.extend(materials)
        dispatched.resubmissions.append(request.origin)
        dispatched.stage = case_pb2.CASE_STAGE_SUBMITTED
        check_event(dispatched)
    again = Stage.SUBMITTED
    overall = overall_status(again if d in asking else d.stage for d in case.departments)
    events: list[NewEvent] = []
    for index, at in enumerate(asking):
        department = at.department
        status = status_event(
            case.case_number,
            department,
            again,
            overall,
            request,
            resubmission.event_id,
            note=resubmission.note,
        )
        event_id = resubmission.event_id if index == 0 else None
        events.append(NewEvent(DISPATCH, department, department, None, again, overall, dispatched))
        events.append(
            NewEvent(STATUS, case.platform_member_id, department, event_id, again, overall, status)
        )
    return CaseDecision(
        result=_result(case.case_number, again, overall),
        changes=tuple(StageChange(at.department, again) for at in asking),
        overall=overall,
        dispatch=dispatched.SerializeToString(),
        events=tuple(events),
        subject=case.applicant_code,
    )


# -- supervision (效能监察) ------------------------------------------------------------------


def supervision_due(
    today: date,
    accepted_on: str,
    limit_days: int,
    warned: bool,
    calendar: workdays.WorkCalendar,
) -> case_pb2.SupervisionKind.ValueType | None:
    """The escalation an open case is due today: a yellow warning once, then overdue once
    (the caller reads only cases not yet escalated as overdue)."""
    state = workdays.status_on(today, date.fromisoformat(accepted_on), limit_days, calendar)
    if state == "overdue":
        return case_pb2.SUPERVISION_KIND_OVERDUE
    if state == "warning" and not warned:
        return case_pb2.SUPERVISION_KIND_WARNING
    return None
