"""The case tables: the reads a decision needs (once, under the case lock) and its writes.

Statements of the per-event paths (PushStatus, the stream polls) are built once: building a
statement per call costs far more CPU than the database takes to run it. They are Core
statements on the tables, run on the call's connection, so nothing is loaded into the ORM.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from xhub.certificates_store import store as certificates
from xhub.certificates_store.schema import CertificateRow
from xhub.hub.binding.store import read_bound_case
from xhub.hub.cases.rules import (
    OPEN_STAGES,
    AtDepartment,
    CaseDecision,
    CaseState,
    CertificateReference,
    EarlierEvent,
    IssuedCertificate,
    MaterialReference,
    NewEvent,
    PlatformRows,
    PushRows,
    References,
)
from xhub.hub.cases.submission import SubmitDecision, SubmitRows, SubmittedCase
from xhub.hub.core.db import (
    CaseDepartmentRow,
    CaseEventRow,
    CaseRow,
    MaterialRow,
    MemberRow,
    PreparedCaseRow,
    table_of,
)
from xhub.hub.materials import store as materials
from xhub.protocol.errors import UnavailableError
from xhub.protocol.stages import Stage
from xhub.v1 import case_pb2

PAGE = 100
EVENT_ORDER_LOCK = 0x78687562  # "xhub": the advisory lock that orders case_events cursors

_CASES = table_of(CaseRow)
_DEPARTMENTS = table_of(CaseDepartmentRow)
_EVENTS = table_of(CaseEventRow)
_CERTIFICATES = table_of(CertificateRow)
_PREPARED = table_of(PreparedCaseRow)

_LOCK_CASE = (
    update(_CASES)
    .where(_CASES.c.case_number == bindparam("number"))
    .values(overall=_CASES.c.overall)
)
_EARLIER = select(_EVENTS.c.case_number, _EVENTS.c.stage, _EVENTS.c.overall).where(
    _EVENTS.c.author == bindparam("author"), _EVENTS.c.event_id == bindparam("event_id")
)
_CASE_COLUMNS = (
    _CASES.c.case_number,
    _CASES.c.platform_member_id,
    _CASES.c.applicant_code,
    _CASES.c.overall,
    _CASES.c.time_limit_days,
    _CASES.c.submitted_at,
    _DEPARTMENTS.c.department,
    _DEPARTMENTS.c.stage,
    _DEPARTMENTS.c.accepted_on,
    _DEPARTMENTS.c.last_sequence,
)
_CASE_AND_DEPARTMENTS = _CASES.outerjoin(
    _DEPARTMENTS, _DEPARTMENTS.c.case_number == _CASES.c.case_number
)
# The case with one row per handling department (one round trip instead of three).
_CASE_AT_DEPARTMENTS = (
    select(*_CASE_COLUMNS)
    .select_from(_CASE_AND_DEPARTMENTS)
    .where(_CASES.c.case_number == bindparam("number"))
)
# The same for the platform's actions, with the dispatched case and the legal representative.
_PLATFORMS_CASE = (
    select(*_CASE_COLUMNS, _CASES.c.dispatch, _PREPARED.c.legal_representative_code)
    .select_from(
        _CASE_AND_DEPARTMENTS.outerjoin(_PREPARED, _PREPARED.c.case_id == _CASES.c.prepared_case_id)
    )
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
_SET_SEQUENCE = (
    update(_DEPARTMENTS).where(*_AT_DEPARTMENT).values(last_sequence=bindparam("new_sequence"))
)
_SET_OVERALL = (
    update(_CASES)
    .where(_CASES.c.case_number == bindparam("number"))
    .values(overall=bindparam("new_overall"))
)
_SET_DISPATCH = (
    update(_CASES)
    .where(_CASES.c.case_number == bindparam("number"))
    .values(dispatch=bindparam("new_dispatch"))
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

# -- reads ---------------------------------------------------------------------------------


def lock_case(session: Session, case_number: str) -> None:
    """Serialize every change to one case: a no-op UPDATE takes PostgreSQL's row lock and
    SQLite's write lock, so the duplicate check, the stage check and the write that follow
    see each other's effects (concurrent retries become duplicates, not double applies)."""
    session.connection().execute(_LOCK_CASE, {"number": case_number})


def _earlier(session: Session, author: str, event_id: str) -> EarlierEvent | None:
    row = session.connection().execute(_EARLIER, {"author": author, "event_id": event_id}).first()
    return EarlierEvent(row.case_number, row.stage, row.overall) if row is not None else None


def _case_state(rows: Sequence[Any], *, platform: bool) -> CaseState | None:
    if not rows:
        return None
    case = rows[0]
    return CaseState(
        case_number=case.case_number,
        platform_member_id=case.platform_member_id,
        applicant_code=case.applicant_code,
        overall=Stage(case.overall),
        time_limit_days=case.time_limit_days,
        submitted_at=case.submitted_at,
        departments=tuple(
            AtDepartment(r.department, Stage(r.stage), r.accepted_on, r.last_sequence or 0)
            for r in rows
            if r.department is not None
        ),
        dispatch=bytes(case.dispatch) if platform else b"",
        legal_representative_code=(case.legal_representative_code or "") if platform else "",
    )


def read_push(session: Session, author: str, push: Any) -> PushRows:
    """Under the case lock: the author's earlier event with this id, else the case at every
    department and the certificate a completion names."""
    lock_case(session, push.case_number)
    earlier = _earlier(session, author, push.event_id)
    if earlier is not None:
        return PushRows(earlier, None)
    connection = session.connection()
    rows = connection.execute(_CASE_AT_DEPARTMENTS, {"number": push.case_number}).all()
    issued = None
    if push.certificate_identifier:
        found = connection.execute(_ISSUED, {"identifier": push.certificate_identifier}).first()
        if found is not None:
            issued = IssuedCertificate(found.issuer_member_id, found.holder_code)
    return PushRows(earlier, _case_state(rows, platform=False), issued)


def read_references(
    session: Session, certificate_identifiers: Sequence[str], material_ids: Sequence[str]
) -> References:
    """The certificates and materials a submission names, as references (None if unknown)."""
    found_certificates: list[CertificateReference | None] = []
    for identifier in certificate_identifiers:
        row = session.get(CertificateRow, identifier)
        found_certificates.append(
            CertificateReference(row.holder_code, certificates.to_ref(row)) if row else None
        )
    found_materials = []
    for material_id in material_ids:
        material = session.get(MaterialRow, material_id)
        found_materials.append(
            MaterialReference(
                material_id,
                (material.applicant_code, materials.to_ref(material)) if material else None,
            )
        )
    return References(tuple(found_certificates), tuple(found_materials))


def read_platform_action(
    session: Session,
    author: str,
    request: Any,
    certificate_identifiers: Sequence[str] = (),
    material_ids: Sequence[str] = (),
) -> PlatformRows:
    """What a withdrawal or resubmission decides on, read under the case lock."""
    lock_case(session, request.case_number)
    earlier = _earlier(session, author, request.event_id)
    if earlier is not None:
        return PlatformRows(earlier, None)
    rows = session.connection().execute(_PLATFORMS_CASE, {"number": request.case_number}).all()
    return PlatformRows(
        earlier,
        _case_state(rows, platform=True),
        read_references(session, certificate_identifiers, material_ids),
    )


def read_submitted(session: Session, prepared_case_id: str) -> SubmittedCase | None:
    """The case a prepared case became, if it was submitted."""
    row = session.execute(
        select(
            CaseRow.case_number,
            CaseRow.platform_member_id,
            CaseRow.applicant_code,
            CaseRow.submission,
            CaseRow.dispatch,
        ).where(CaseRow.prepared_case_id == prepared_case_id)
    ).first()
    if row is None:
        return None
    dispatched = case_pb2.DispatchedCase.FromString(row.dispatch)
    return SubmittedCase(
        case_number=row.case_number,
        prepared_case_id=prepared_case_id,
        platform_member_id=row.platform_member_id,
        applicant_code=row.applicant_code,
        submission=bytes(row.submission),
        departments=tuple(dispatched.item.departments),
    )


def read_submission(session: Session, case_id: str, submission: Any) -> SubmitRows:
    """The prepared case with its item, the case it already became (if any), which of its
    departments are registered, and what the submission references."""
    case = read_bound_case(session, case_id)
    if case is None:
        return SubmitRows(None)
    submitted = read_submitted(session, case.case_id)
    if submitted is not None:
        return SubmitRows(case, submitted)
    departments = list(case.item.departments) if case.item is not None else []
    registered = session.scalars(
        select(MemberRow.member_id).where(MemberRow.member_id.in_(departments))
    )
    return SubmitRows(
        case,
        registered=frozenset(registered),
        references=read_references(
            session, submission.certificate_identifiers, submission.material_ids
        ),
    )


def page(
    engine: Engine,
    kind: str,
    recipient: str,
    after: int,
    then: Callable[[Connection], object] | None = None,
) -> list[tuple[int, bytes]]:
    """The next events of one stream after its cursor; ``then`` (the subscriber's member
    check) runs on the same connection right after a read that found events, so nothing
    read is handed on unless the check, made after the read, passed."""
    # Polled by every open stream: one prebuilt read on a bare connection, no session.
    with engine.connect() as connection:
        rows = connection.execute(
            _PAGE, {"kind": kind, "recipient": recipient, "after": after}
        ).all()
        if rows and then is not None:
            then(connection)
    return [(int(c), bytes(b)) for c, b in rows]


# -- writes --------------------------------------------------------------------------------


def add_events(
    session: Session, case_number: str, author: str, events: Sequence[NewEvent], now: datetime
) -> None:
    connection = session.connection()
    for event in events:
        if connection.dialect.name == "postgresql":
            # Cursors are assigned at insert but rows become visible at commit; holding one
            # lock until commit makes cursor order equal commit order, so a stream that moved
            # past cursor N can never miss an N-1 that commits later.
            connection.execute(_EVENT_ORDER)
        row = {
            "case_number": case_number,
            "kind": event.kind,
            "recipient": event.recipient,
            "author": author,
            "event_id": event.event_id,
            "department": event.department,
            "stage": int(event.stage),
            "overall": int(event.overall),
            "body": event.body.SerializeToString(),
            "created_at": now,
        }
        try:
            session.flush()  # the ORM changes of the colder handlers land first, as before
            connection.execute(_ADD_EVENT, row)
        except IntegrityError as exc:
            # The same event id is being applied by a concurrent call (a client retry racing
            # its first attempt): let the client retry and receive the first result.
            raise UnavailableError(
                "a push with this event id is being applied; retry to get its result",
                metadata={"event_id": event.event_id or ""},
            ) from exc


def apply(
    session: Session, case_number: str, author: str, decision: CaseDecision, now: datetime
) -> None:
    """Write a push, withdrawal or resubmission: stages, the case, then its events."""
    connection = session.connection()
    for change in decision.changes:
        at = {
            "number": case_number,
            "at_department": change.department,
            "new_stage": int(change.stage),
            "now": now,
        }
        if change.accepted_on:
            at["new_accepted_on"] = change.accepted_on
            at["new_deadline"] = change.deadline
            connection.execute(_SET_STAGE_ACCEPTED, at)
        else:
            connection.execute(_SET_STAGE, at)
        if change.sequence:
            connection.execute(
                _SET_SEQUENCE,
                {
                    "number": case_number,
                    "at_department": change.department,
                    "new_sequence": change.sequence,
                },
            )
    if decision.overall is not None:
        connection.execute(
            _SET_OVERALL, {"number": case_number, "new_overall": int(decision.overall)}
        )
    if decision.dispatch is not None:
        connection.execute(
            _SET_DISPATCH, {"number": case_number, "new_dispatch": decision.dispatch}
        )
    add_events(session, case_number, author, decision.events, now)


def insert_case(session: Session, decision: SubmitDecision) -> None:
    """A submitted case, its row at every handling department, and the dispatch events."""
    case = decision.case
    if case is None:
        return  # a repeated submission: the first one stands
    session.add(
        CaseRow(
            case_number=case.case_number,
            prepared_case_id=case.prepared_case_id,
            item_code=case.item_code,
            platform_member_id=case.platform_member_id,
            applicant_code=case.applicant_code,
            submission=case.submission,
            dispatch=case.dispatch,
            overall=int(Stage.SUBMITTED),
            time_limit_days=case.time_limit_days,
            submitted_at=case.submitted_at,
        )
    )
    try:
        session.flush()
    except IntegrityError as exc:
        # The same prepared case is being submitted by a concurrent call (a retry racing its
        # first attempt): the retry after this one receives the first receipt.
        raise UnavailableError(
            "this prepared case is being submitted; retry to get its receipt",
            metadata={"case_id": case.prepared_case_id},
        ) from exc
    for department in case.departments:
        session.add(
            CaseDepartmentRow(
                case_number=case.case_number,
                department=department,
                stage=int(Stage.SUBMITTED),
                accepted_on="",
                deadline="",
                warned=0,
                overdue=0,
                updated_at=case.submitted_at,
                last_sequence=0,
            )
        )
    add_events(
        session, case.case_number, case.platform_member_id, decision.events, case.submitted_at
    )


# -- supervision ---------------------------------------------------------------------------


def open_time_limits(session: Session) -> list[tuple[CaseDepartmentRow, int]]:
    """Accepted, still open and not yet overdue: each department's row with its time limit."""
    rows = session.execute(
        select(CaseDepartmentRow, CaseRow.time_limit_days)
        .join(CaseRow, CaseRow.case_number == CaseDepartmentRow.case_number)
        .where(
            CaseDepartmentRow.accepted_on != "",
            CaseDepartmentRow.stage.in_([int(s) for s in OPEN_STAGES]),
            CaseDepartmentRow.overdue == 0,
        )
    ).all()
    return [(row, int(limit)) for row, limit in rows]


def claim_escalation(session: Session, case_number: str, department: str, flag: str) -> bool:
    """Set ``flag`` ("warned" or "overdue"; overdue implies warned) unless it is set: the
    one hub process whose claim succeeds publishes the escalation."""
    claimed = session.execute(
        update(CaseDepartmentRow)
        .where(
            CaseDepartmentRow.case_number == case_number,
            CaseDepartmentRow.department == department,
            getattr(CaseDepartmentRow, flag) == 0,
        )
        .values({flag: 1, "warned": 1})
    )
    return bool(claimed.rowcount == 1)  # type: ignore[attr-defined]


def overall_of(session: Session, case_number: str) -> Stage:
    overall = session.scalar(select(CaseRow.overall).where(CaseRow.case_number == case_number))
    if overall is None:
        raise LookupError(f"no case {case_number!r}")  # claimed rows always have their case
    return Stage(overall)
