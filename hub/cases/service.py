"""CaseService (办件派发与状态回传): submit once, dispatch to every department, status back.

Every event (dispatch, status, supervision) is a row of ``case_events`` with a global
cursor. Subscription streams read that table after the subscriber's cursor, so delivery
is at-least-once, survives a crash of any party, and works across hub processes. Pushes
are idempotent by the author's event id; the stage machine lives in ``hub.cases.stages``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, date, datetime
from functools import partial
from typing import Any, TypeVar

from google.protobuf.message import Message
from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from xhub.certificates_store import store
from xhub.certificates_store.schema import CertificateRow
from xhub.hub.binding.purpose import bound_case, deny_unbound
from xhub.hub.cases import calendar as workdays
from xhub.hub.catalog import store as catalog
from xhub.hub.core.audit_log import ALLOWED, AuditDraft
from xhub.hub.core.db import (
    CaseDepartmentRow,
    CaseEventRow,
    CaseRow,
    MemberRow,
    PreparedCaseRow,
    table_of,
)
from xhub.hub.core.rpc import Context, Service, Unary
from xhub.hub.core.runtime import Call, HubRuntime
from xhub.hub.materials import store as materials
from xhub.protocol.errors import (
    FailedPreconditionError,
    MalformedError,
    NotFoundError,
    PermissionDeniedError,
    UnavailableError,
)
from xhub.protocol.stages import Actor, IllegalTransition, Stage, next_stage, overall_status
from xhub.v1 import case_pb2, envelope_pb2, registry_pb2

log = logging.getLogger("xhub.cases")
DESCRIPTOR = case_pb2.DESCRIPTOR.services_by_name["CaseService"]
SERVICE = DESCRIPTOR.full_name
POLL_SECONDS = 0.2
PAGE = 100
SUPERVISION = "supervision"
EVENT_ORDER_LOCK = 0x78687562  # "xhub": the advisory lock that orders case_events cursors
M = TypeVar("M", bound=Message)


# Statements of the per-event paths (PushStatus, the stream polls), built once: building a
# statement per call costs far more CPU than the database takes to run it. They are Core
# statements on the tables, run on the call's connection, so nothing is loaded into the ORM.
_CASES = table_of(CaseRow)
_DEPARTMENTS = table_of(CaseDepartmentRow)
_EVENTS = table_of(CaseEventRow)
_CERTIFICATES = table_of(CertificateRow)

_LOCK_CASE = (
    update(_CASES)
    .where(_CASES.c.case_number == bindparam("number"))
    .values(overall=_CASES.c.overall)
)
_FIRST_RESULT = select(_EVENTS.c.case_number, _EVENTS.c.stage, _EVENTS.c.overall).where(
    _EVENTS.c.author == bindparam("author"), _EVENTS.c.event_id == bindparam("event_id")
)
# The case with one row per handling department (one round trip instead of three).
_CASE_AT_DEPARTMENTS = (
    select(
        _CASES.c.case_number,
        _CASES.c.platform_member_id,
        _CASES.c.applicant_code,
        _CASES.c.overall,
        _CASES.c.time_limit_days,
        _CASES.c.submitted_at,
        _DEPARTMENTS.c.department,
        _DEPARTMENTS.c.stage,
        _DEPARTMENTS.c.accepted_on,
    )
    .select_from(_CASES.outerjoin(_DEPARTMENTS, _DEPARTMENTS.c.case_number == _CASES.c.case_number))
    .where(_CASES.c.case_number == bindparam("number"))
)
_AT_DEPARTMENT = (
    _DEPARTMENTS.c.case_number == bindparam("number"),
    _DEPARTMENTS.c.department == bindparam("at_department"),
)
_SET_STAGE = (
    update(_DEPARTMENTS)
    .where(*_AT_DEPARTMENT)
    .values(stage=bindparam("new_stage"), updated_at=bindparam("now"))
)
_SET_STAGE_ACCEPTED = (
    update(_DEPARTMENTS)
    .where(*_AT_DEPARTMENT)
    .values(
        stage=bindparam("new_stage"),
        updated_at=bindparam("now"),
        accepted_on=bindparam("new_accepted_on"),
        deadline=bindparam("new_deadline"),
    )
)
_SET_OVERALL = (
    update(_CASES)
    .where(_CASES.c.case_number == bindparam("number"))
    .values(overall=bindparam("new_overall"))
)
_ISSUED = select(_CERTIFICATES.c.issuer_member_id, _CERTIFICATES.c.holder_code).where(
    _CERTIFICATES.c.identifier == bindparam("identifier")
)
_EVENT_ORDER = select(func.pg_advisory_xact_lock(EVENT_ORDER_LOCK))
_ADD_EVENT = insert(_EVENTS)
_PAGE = (
    select(_EVENTS.c.cursor, _EVENTS.c.body)
    .where(
        _EVENTS.c.kind == bindparam("kind"),
        _EVENTS.c.recipient == bindparam("recipient"),
        _EVENTS.c.cursor > bindparam("after"),
    )
    .order_by(_EVENTS.c.cursor)
    .limit(PAGE)
)


def _stage_error(exc: IllegalTransition) -> FailedPreconditionError:
    return FailedPreconditionError(
        str(exc),
        reason=envelope_pb2.ERROR_REASON_STATUS_TRANSITION,
        metadata={"current_stage": exc.current.name, "code": exc.reason},
    )


class CaseService(Service):
    descriptor = DESCRIPTOR

    def __init__(self, runtime: HubRuntime, calendar: workdays.WorkCalendar | None = None) -> None:
        super().__init__(runtime)
        self.calendar = calendar or workdays.WorkCalendar.from_file(workdays.SAMPLE_CN_2026)

    def unary(self) -> Sequence[Unary[Any]]:
        return [
            Unary(
                "SubmitCase",
                case_pb2.CaseSubmission,
                self._notifying(_submit),
                role=registry_pb2.ROLE_PLATFORM,
            ),
            Unary(
                "WithdrawCase",
                case_pb2.CaseWithdrawal,
                self._notifying(_withdraw),
                role=registry_pb2.ROLE_PLATFORM,
            ),
            Unary(
                "ResubmitCase",
                case_pb2.CaseResubmission,
                self._notifying(_resubmit),
                role=registry_pb2.ROLE_PLATFORM,
            ),
            Unary(
                "PushStatus",
                case_pb2.StatusPush,
                self._notifying(self._push),
                role=registry_pb2.ROLE_DEPARTMENT,
            ),
        ]

    # -- platform -------------------------------------------------------------

    def _notifying(self, handler: Callable[[Call[M]], Message]) -> Callable[[Call[M]], Message]:
        """Wake this process's streams once the handler's events are committed."""

        def run(call: Call[M]) -> Message:
            call.after_commit.append(self.runtime.notifier.notify)
            return handler(call)

        return run

    # -- department -----------------------------------------------------------

    def _push(self, call: Call[case_pb2.StatusPush]) -> case_pb2.StatusPushResult:
        push = call.message
        call.audit.case_id = push.case_number[:40]
        if not push.event_id or len(push.event_id) > 64:
            raise MalformedError("event_id must be 1–64 characters", metadata={"field": "event_id"})
        department = call.caller.member_id
        _lock_case(call.session, push.case_number)
        first = _first_result(call.session, department, push.event_id, push.case_number)
        if first is not None:
            return first
        # Core reads under the case lock: the case and every department's stage at once.
        connection = call.session.connection()
        rows = connection.execute(_CASE_AT_DEPARTMENTS, {"number": push.case_number}).all()
        if not rows:
            raise _no_such_case(push.case_number)
        case = rows[0]
        case_number: str = case.case_number
        row = next((r for r in rows if r.department == department), None)
        if row is None:
            raise PermissionDeniedError(
                "this case was not dispatched to you",
                reason=envelope_pb2.ERROR_REASON_NOT_YOUR_CASE,
                metadata={"case_number": case_number},
            )
        try:
            proposed = Stage(push.stage)
        except ValueError as exc:
            raise MalformedError("unknown stage", metadata={"field": "stage"}) from exc
        now = datetime.now(UTC)
        try:
            new = next_stage(
                Stage(row.stage),
                proposed,
                Actor.DEPARTMENT,
                submitted_at=case.submitted_at,
                now=now,
            )
        except IllegalTransition as exc:
            raise _stage_error(exc) from exc
        if new == Stage.SUPPLEMENT_REQUIRED and not push.missing_items:
            raise MalformedError(
                "补正 (supplement required) must list the missing items",
                metadata={"field": "missing_items"},
            )
        if push.certificate_identifier:
            issued = connection.execute(
                _ISSUED, {"identifier": push.certificate_identifier}
            ).first()
            if (
                new != Stage.COMPLETED
                or issued is None
                or issued.issuer_member_id != department
                or issued.holder_code != case.applicant_code
            ):
                raise MalformedError(
                    "certificate_identifier: only on COMPLETED, naming a certificate you "
                    "issued to the applicant",
                    metadata={"field": "certificate_identifier"},
                )
        at = {"number": case_number, "at_department": department, "new_stage": int(new), "now": now}
        if new == Stage.ACCEPTED and not row.accepted_on:
            accepted = now.date()
            limit = workdays.deadline(accepted, case.time_limit_days, self.calendar)
            at["new_accepted_on"] = accepted.isoformat()
            at["new_deadline"] = limit.isoformat()
            connection.execute(_SET_STAGE_ACCEPTED, at)
        else:
            connection.execute(_SET_STAGE, at)
        overall = overall_status(new if r is row else Stage(r.stage) for r in rows)
        if int(overall) != case.overall:
            connection.execute(_SET_OVERALL, {"number": case_number, "new_overall": int(overall)})
        event = case_pb2.StatusEvent(
            case_number=case_number,
            department=department,
            stage=int(new),  # type: ignore[arg-type]
            overall=int(overall),  # type: ignore[arg-type]
            event_id=push.event_id,
            note=push.note,
            missing_items=push.missing_items,
            certificate_identifier=push.certificate_identifier,
            origin=call.admitted.opened.envelope,
        )
        event.recorded_at.FromDatetime(now)
        _add_event(
            call.session,
            case_number,
            kind="status",
            recipient=case.platform_member_id,
            author=department,
            event_id=push.event_id,
            department=department,
            stage=new,
            overall=overall,
            body=event,
            now=now,
        )
        return case_pb2.StatusPushResult(
            case_number=case_number,
            stage=int(new),  # type: ignore[arg-type]
            overall=int(overall),  # type: ignore[arg-type]
        )

    # -- streams --------------------------------------------------------------

    async def SubscribeCases(
        self, request: case_pb2.SubscribeCasesRequest, context: Context
    ) -> AsyncIterator[case_pb2.SubscribeCasesResponse]:
        async for envelope in self._stream(
            context,
            request.envelope,
            "dispatch",
            "SubscribeCases",
            registry_pb2.ROLE_DEPARTMENT,
            case_pb2.DispatchedCase,
        ):
            yield case_pb2.SubscribeCasesResponse(envelope=envelope)

    async def SubscribeStatus(
        self, request: case_pb2.SubscribeStatusRequest, context: Context
    ) -> AsyncIterator[case_pb2.SubscribeStatusResponse]:
        async for envelope in self._stream(
            context,
            request.envelope,
            "status",
            "SubscribeStatus",
            registry_pb2.ROLE_PLATFORM,
            case_pb2.StatusEvent,
        ):
            yield case_pb2.SubscribeStatusResponse(envelope=envelope)

    async def SubscribeSupervision(
        self, request: case_pb2.SubscribeSupervisionRequest, context: Context
    ) -> AsyncIterator[case_pb2.SubscribeSupervisionResponse]:
        async for envelope in self._stream(
            context,
            request.envelope,
            SUPERVISION,
            "SubscribeSupervision",
            registry_pb2.ROLE_AUDITOR,
            case_pb2.SupervisionEvent,
        ):
            yield case_pb2.SubscribeSupervisionResponse(envelope=envelope)

    async def _stream(
        self,
        context: Context,
        envelope: envelope_pb2.Envelope,
        kind: str,
        name: str,
        role: registry_pb2.Role.ValueType,
        body_type: type[M],
    ) -> AsyncIterator[envelope_pb2.Envelope]:
        """Events for the caller after its cursor, hub-signed, polling the database."""
        admitted, draft = await self.runtime.admit(
            context,
            envelope,
            case_pb2.CaseSubscription,
            method=f"/{SERVICE}/{name}",
            require_role=role,
        )
        await self.runtime.run_blocking(
            lambda: self.runtime.complete(admitted, draft, lambda call: case_pb2.CaseSubscription())
        )  # the subscription itself is audited once
        recipient = "" if kind == SUPERVISION else admitted.caller.member_id
        cursor = admitted.message.after_cursor
        while not context.done():
            rows = await self.runtime.run_blocking(partial(self._page, kind, recipient, cursor))
            for event_cursor, body in rows:
                message = body_type()
                message.ParseFromString(body)
                setattr(message, "cursor", event_cursor)  # noqa: B010 - every streamed body has one
                yield self.runtime.sign_response(message, admitted.header)
                cursor = event_cursor
            if len(rows) < PAGE:
                await self.runtime.notifier.wait(POLL_SECONDS)

    def _page(self, kind: str, recipient: str, after: int) -> list[tuple[int, bytes]]:
        # Polled by every open stream: one prebuilt read on a bare connection, no session.
        with self.runtime.engine.connect() as connection:
            rows = connection.execute(
                _PAGE, {"kind": kind, "recipient": recipient, "after": after}
            ).all()
        return [(int(c), bytes(b)) for c, b in rows]

    # -- time limits ----------------------------------------------------------

    def supervise(self, today: date | None = None) -> int:
        """Publish warnings and overdue escalations once each (several hubs may run this)."""
        today = today or datetime.now(UTC).date()
        published = 0
        with self.runtime.sessions() as session:
            open_rows = session.execute(
                select(CaseDepartmentRow, CaseRow.time_limit_days)
                .join(CaseRow, CaseRow.case_number == CaseDepartmentRow.case_number)
                .where(
                    CaseDepartmentRow.accepted_on != "",
                    CaseDepartmentRow.stage.in_(
                        [int(Stage.ACCEPTED), int(Stage.UNDER_REVIEW), int(Stage.APPROVED)]
                    ),
                    CaseDepartmentRow.overdue == 0,
                )
            ).all()
        for row, limit in open_rows:
            state = workdays.status_on(
                today, date.fromisoformat(row.accepted_on), limit, self.calendar
            )
            if state == "ok" or (state == "warning" and row.warned):
                continue
            kind = (
                case_pb2.SUPERVISION_KIND_OVERDUE
                if state == "overdue"
                else case_pb2.SUPERVISION_KIND_WARNING
            )
            if self._escalate(row.case_number, row.department, kind, row.accepted_on, row.deadline):
                published += 1
        return published

    def _escalate(
        self,
        case_number: str,
        department: str,
        kind: case_pb2.SupervisionKind.ValueType,
        accepted_on: str,
        deadline: str,
    ) -> bool:
        flag = "overdue" if kind == case_pb2.SUPERVISION_KIND_OVERDUE else "warned"
        now = datetime.now(UTC)
        with self.runtime.sessions() as session:
            claimed = session.execute(
                update(CaseDepartmentRow)
                .where(
                    CaseDepartmentRow.case_number == case_number,
                    CaseDepartmentRow.department == department,
                    getattr(CaseDepartmentRow, flag) == 0,
                )
                .values({flag: 1, "warned": 1})
            )
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                return False  # another hub process published it
            case = _case(session, case_number)
            event = case_pb2.SupervisionEvent(
                case_number=case_number,
                department=department,
                kind=kind,
                deadline=deadline,
                accepted_on=accepted_on,
            )
            _add_event(
                session,
                case_number,
                kind=SUPERVISION,
                recipient="",
                author=self.runtime.identity.hub_id,
                event_id=f"{flag}:{case_number}:{department}"[:64],
                department=department,
                stage=Stage(case.overall),
                overall=Stage(case.overall),
                body=event,
                now=now,
            )
            draft = AuditDraft(
                method=f"/{SERVICE}/Supervision",
                sender=self.runtime.identity.hub_id,
                recipient=department,
                case_id=case_number,
            )
            self.runtime.audit.append(
                session,
                draft,
                ALLOWED,
                case_pb2.SupervisionKind.Name(kind).removeprefix("SUPERVISION_KIND_"),
            )
            session.commit()
        return True


# -- handlers ---------------------------------------------------------------------


def _no_such_case(case_number: str) -> NotFoundError:
    return NotFoundError(
        f"no case {case_number[:40]!r}", metadata={"case_number": case_number[:40]}
    )


def _case(session: Session, case_number: str) -> CaseRow:
    case = session.get(CaseRow, case_number)
    if case is None:
        raise _no_such_case(case_number)
    return case


def _add_event(
    session: Session,
    case_number: str,
    *,
    kind: str,
    recipient: str,
    author: str,
    event_id: str | None,
    department: str,
    stage: Stage,
    overall: Stage,
    body: Message,
    now: datetime,
) -> None:
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        # Cursors are assigned at insert but rows become visible at commit; holding one lock
        # until commit makes cursor order equal commit order, so a stream that moved past
        # cursor N can never miss an N-1 that commits later.
        connection.execute(_EVENT_ORDER)
    event = {
        "case_number": case_number,
        "kind": kind,
        "recipient": recipient,
        "author": author,
        "event_id": event_id,
        "department": department,
        "stage": int(stage),
        "overall": int(overall),
        "body": body.SerializeToString(),
        "created_at": now,
    }
    try:
        session.flush()  # the ORM changes of the colder handlers land first, as before
        connection.execute(_ADD_EVENT, event)
    except IntegrityError as exc:
        # The same event id is being applied by a concurrent call (a client retry racing
        # its first attempt): let the client retry and receive the first result.
        raise UnavailableError(
            "a push with this event id is being applied; retry to get its result",
            metadata={"event_id": event_id or ""},
        ) from exc


def _lock_case(session: Session, case_number: str) -> None:
    """Serialize every change to one case: a no-op UPDATE takes PostgreSQL's row lock and
    SQLite's write lock, so the duplicate check, the stage check and the write that follow
    see each other's effects (concurrent retries become duplicates, not double applies)."""
    session.connection().execute(_LOCK_CASE, {"number": case_number})


def _update_overall(session: Session, case: CaseRow) -> Stage:
    stages = session.scalars(
        select(CaseDepartmentRow.stage).where(CaseDepartmentRow.case_number == case.case_number)
    ).all()
    overall = overall_status(Stage(s) for s in stages)
    case.overall = int(overall)
    return overall


def _first_result(
    session: Session, author: str, event_id: str, case_number: str
) -> case_pb2.StatusPushResult | None:
    """A repeated push returns the first result and adds nothing."""
    row = (
        session.connection()
        .execute(_FIRST_RESULT, {"author": author, "event_id": event_id})
        .first()
    )
    if row is None:
        return None
    if row.case_number != case_number:
        raise MalformedError(
            "this event_id was already used for another case", metadata={"field": "event_id"}
        )
    return case_pb2.StatusPushResult(
        case_number=row.case_number, stage=row.stage, overall=row.overall, duplicate=True
    )


def _submit(call: Call[case_pb2.CaseSubmission]) -> case_pb2.CaseReceipt:
    submission = call.message
    prepared = bound_case(call)
    call.audit.subject = prepared.applicant_code
    if call.session.scalar(
        select(CaseRow.case_number).where(CaseRow.prepared_case_id == prepared.case_id)
    ):
        raise FailedPreconditionError(
            "this prepared case was already submitted",
            reason=envelope_pb2.ERROR_REASON_STATUS_TRANSITION,
            metadata={"case_id": prepared.case_id},
        )
    item = catalog.get_item(call.session, prepared.item_code)
    departments = [d for d in item.departments]
    if not departments:
        raise FailedPreconditionError(
            f"item {item.code} names no handling department", metadata={"item_code": item.code}
        )
    known = set(
        call.session.scalars(
            select(MemberRow.member_id).where(MemberRow.member_id.in_(departments))
        )
    )
    if missing := [d for d in departments if d not in known]:
        raise FailedPreconditionError(
            f"handling department(s) {', '.join(missing)} are not registered",
            metadata={"item_code": item.code},
        )
    holders = {prepared.applicant_code, prepared.legal_representative_code} - {""}
    certificates = []
    for identifier in submission.certificate_identifiers:
        row = call.session.get(CertificateRow, identifier)
        if row is None or row.holder_code not in holders:
            raise deny_unbound(
                "a referenced certificate is not the applicant's", case_id=prepared.case_id
            )
        certificates.append(store.to_ref(row))
    used_materials = []
    for material_id in submission.material_ids:
        material = materials.get(call.session, material_id)
        if material.applicant_code != prepared.applicant_code:
            raise deny_unbound(
                "a referenced material belongs to another applicant", case_id=prepared.case_id
            )
        used_materials.append(materials.to_ref(material))
    now = datetime.now(UTC)
    case_number = now.strftime("%Y%m%d") + uuid.uuid4().hex[:12].upper()
    dispatched = case_pb2.DispatchedCase(
        case_number=case_number,
        item=item,
        applicant_code=prepared.applicant_code,
        applicant_name=submission.applicant_name[:200],
        certificates=certificates,
        materials=used_materials,
        form=dict(submission.form),
        submission=call.admitted.opened.envelope,
        platform=call.caller.member_id,
        stage=case_pb2.CASE_STAGE_SUBMITTED,
    )
    dispatched.submitted_at.FromDatetime(now)
    case = CaseRow(
        case_number=case_number,
        prepared_case_id=prepared.case_id,
        item_code=item.code,
        platform_member_id=call.caller.member_id,
        applicant_code=prepared.applicant_code,
        submission=call.admitted.opened.envelope.SerializeToString(),
        dispatch=dispatched.SerializeToString(),
        overall=int(Stage.SUBMITTED),
        time_limit_days=item.time_limit_days or 1,
        submitted_at=now,
    )
    call.session.add(case)
    call.session.flush()
    call.audit.case_id = case_number
    for department in departments:
        call.session.add(
            CaseDepartmentRow(
                case_number=case_number,
                department=department,
                stage=int(Stage.SUBMITTED),
                accepted_on="",
                deadline="",
                warned=0,
                overdue=0,
                updated_at=now,
            )
        )
        _add_event(
            call.session,
            case.case_number,
            kind="dispatch",
            recipient=department,
            author=call.caller.member_id,
            event_id=None,
            department=department,
            stage=Stage.SUBMITTED,
            overall=Stage.SUBMITTED,
            body=dispatched,
            now=now,
        )
    return case_pb2.CaseReceipt(case_number=case_number, departments=departments)


def _withdraw(call: Call[case_pb2.CaseWithdrawal]) -> case_pb2.StatusPushResult:
    request = call.message
    call.audit.case_id = request.case_number[:40]
    if not request.event_id or len(request.event_id) > 64:
        raise MalformedError("event_id must be 1–64 characters", metadata={"field": "event_id"})
    _lock_case(call.session, request.case_number)
    first = _first_result(
        call.session, call.caller.member_id, request.event_id, request.case_number
    )
    if first is not None:
        return first
    case = _case(call.session, request.case_number)
    if case.platform_member_id != call.caller.member_id:
        raise PermissionDeniedError(
            "another platform's case",
            reason=envelope_pb2.ERROR_REASON_NOT_YOUR_CASE,
            metadata={"case_number": case.case_number},
        )
    now = datetime.now(UTC)
    rows = call.session.scalars(
        select(CaseDepartmentRow).where(CaseDepartmentRow.case_number == case.case_number)
    ).all()
    try:
        for row in rows:  # check all first: withdrawal is all or nothing
            next_stage(
                Stage(row.stage),
                Stage.WITHDRAWN,
                Actor.PLATFORM,
                submitted_at=case.submitted_at,
                now=now,
            )
    except IllegalTransition as exc:
        raise _stage_error(exc) from exc
    for index, row in enumerate(rows):
        row.stage = int(Stage.WITHDRAWN)
        row.updated_at = now
        event = case_pb2.StatusEvent(
            case_number=case.case_number,
            department=row.department,
            stage=case_pb2.CASE_STAGE_WITHDRAWN,
            overall=case_pb2.CASE_STAGE_WITHDRAWN,
            event_id=request.event_id,
            note=request.reason,
            origin=call.admitted.opened.envelope,
        )
        event.recorded_at.FromDatetime(now)
        # The platform's stream and each department's stream both learn of it.
        for recipient, kind in ((case.platform_member_id, "status"), (row.department, "dispatch")):
            _add_event(
                call.session,
                case.case_number,
                kind=kind,
                recipient=recipient,
                author=call.caller.member_id,
                event_id=request.event_id if (index == 0 and kind == "status") else None,
                department=row.department,
                stage=Stage.WITHDRAWN,
                overall=Stage.WITHDRAWN,
                body=event if kind == "status" else _withdrawn_dispatch(case),
                now=now,
            )
    case.overall = int(Stage.WITHDRAWN)
    return case_pb2.StatusPushResult(
        case_number=case.case_number,
        stage=case_pb2.CASE_STAGE_WITHDRAWN,
        overall=case_pb2.CASE_STAGE_WITHDRAWN,
    )


def _resubmit(call: Call[case_pb2.CaseResubmission]) -> case_pb2.StatusPushResult:
    """补正后重新提交: the departments that asked get the case again, at SUBMITTED."""
    request = call.message
    call.audit.case_id = request.case_number[:40]
    if not request.event_id or len(request.event_id) > 64:
        raise MalformedError("event_id must be 1–64 characters", metadata={"field": "event_id"})
    _lock_case(call.session, request.case_number)
    first = _first_result(
        call.session, call.caller.member_id, request.event_id, request.case_number
    )
    if first is not None:
        return first
    case = _case(call.session, request.case_number)
    if case.platform_member_id != call.caller.member_id:
        raise PermissionDeniedError(
            "another platform's case",
            reason=envelope_pb2.ERROR_REASON_NOT_YOUR_CASE,
            metadata={"case_number": case.case_number},
        )
    call.audit.subject = case.applicant_code
    asking = call.session.scalars(
        select(CaseDepartmentRow).where(
            CaseDepartmentRow.case_number == case.case_number,
            CaseDepartmentRow.stage == int(Stage.SUPPLEMENT_REQUIRED),
        )
    ).all()
    if not asking:
        raise FailedPreconditionError(
            f"no department asked for a supplement; the case is at {Stage(case.overall).label}",
            reason=envelope_pb2.ERROR_REASON_STATUS_TRANSITION,
            metadata={"current_stage": Stage(case.overall).name},
        )
    prepared = call.session.get(PreparedCaseRow, case.prepared_case_id)
    holders = {case.applicant_code} | (
        {prepared.legal_representative_code} - {""} if prepared else set()
    )
    dispatched = case_pb2.DispatchedCase()
    dispatched.ParseFromString(case.dispatch)
    for identifier in request.certificate_identifiers:
        certificate = call.session.get(CertificateRow, identifier)
        if certificate is None or certificate.holder_code not in holders:
            raise deny_unbound(
                "a referenced certificate is not the applicant's", case_id=case.case_number
            )
        dispatched.certificates.append(store.to_ref(certificate))
    for material_id in request.material_ids:
        material = materials.get(call.session, material_id)
        if material.applicant_code != case.applicant_code:
            raise deny_unbound(
                "a referenced material belongs to another applicant", case_id=case.case_number
            )
        dispatched.materials.append(materials.to_ref(material))
    dispatched.resubmissions.append(call.admitted.opened.envelope)
    dispatched.stage = case_pb2.CASE_STAGE_SUBMITTED
    case.dispatch = dispatched.SerializeToString()
    now = datetime.now(UTC)
    for row in asking:
        try:
            next_stage(
                Stage(row.stage),
                Stage.SUBMITTED,
                Actor.PLATFORM,
                submitted_at=case.submitted_at,
                now=now,
            )
        except IllegalTransition as exc:
            raise _stage_error(exc) from exc
        row.stage = int(Stage.SUBMITTED)
        row.updated_at = now
    overall = _update_overall(call.session, case)
    for index, row in enumerate(asking):
        _add_event(
            call.session,
            case.case_number,
            kind="dispatch",
            recipient=row.department,
            author=call.caller.member_id,
            event_id=None,
            department=row.department,
            stage=Stage.SUBMITTED,
            overall=overall,
            body=dispatched,
            now=now,
        )
        event = case_pb2.StatusEvent(
            case_number=case.case_number,
            department=row.department,
            stage=case_pb2.CASE_STAGE_SUBMITTED,
            overall=int(overall),  # type: ignore[arg-type]
            event_id=request.event_id,
            note=request.note,
            origin=call.admitted.opened.envelope,
        )
        event.recorded_at.FromDatetime(now)
        _add_event(
            call.session,
            case.case_number,
            kind="status",
            recipient=case.platform_member_id,
            author=call.caller.member_id,
            event_id=request.event_id if index == 0 else None,
            department=row.department,
            stage=Stage.SUBMITTED,
            overall=overall,
            body=event,
            now=now,
        )
    return case_pb2.StatusPushResult(
        case_number=case.case_number,
        stage=case_pb2.CASE_STAGE_SUBMITTED,
        overall=int(overall),  # type: ignore[arg-type]
    )


def _withdrawn_dispatch(case: CaseRow) -> case_pb2.DispatchedCase:
    """A department learns of a withdrawal on its own stream: the case, marked withdrawn."""
    dispatched = case_pb2.DispatchedCase()
    dispatched.ParseFromString(case.dispatch)
    dispatched.stage = case_pb2.CASE_STAGE_WITHDRAWN
    return dispatched
