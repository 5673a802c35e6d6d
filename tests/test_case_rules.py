"""The case deciders (hub.cases.rules) as tables over rows built by hand — no hub, no database.

Every rule of push / withdraw / resubmit / submit, allowed and refused, with the refusal and
what it reports; the time-limit supervision rule. The same rules over a running hub are in
tests/test_cases_*.py (which also check what reaches the wire)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from xhub.hub.binding.rules import BoundCase, Refusal, RuleError
from xhub.hub.cases import calendar as workdays
from xhub.hub.cases.limits import MAX_RESUBMISSIONS
from xhub.hub.cases.rules import (
    DISPATCH,
    STATUS,
    AtDepartment,
    CaseState,
    CertificateReference,
    EarlierEvent,
    IssuedCertificate,
    MaterialReference,
    PlatformRows,
    PushRows,
    References,
    Request,
    decide_push,
    decide_resubmit,
    decide_withdraw,
    supervision_due,
)
from xhub.hub.cases.submission import SubmitRows, SubmittedCase, decide_lookup, decide_submit
from xhub.protocol import codes
from xhub.protocol.stages import Stage
from xhub.v1 import case_pb2, certificate_pb2, envelope_pb2, intake_pb2, material_pb2

NOW = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
CALENDAR = workdays.WorkCalendar.from_file(workdays.SAMPLE_CN_2026)
PLATFORM, DEPT, DEPT2 = "platform", "department", "department2"
PERSON, OTHER = "440103198001011234", "91440103MA5CQ9AB0X"
COMPANY = codes.make_uscc("9", "1", "440103", "MA5CQ8XY")  # valid: submissions check its type
NUMBER = "20260302ABCDEF123456"
ORIGIN = envelope_pb2.Envelope(payload_type="xhub.v1.StatusPush", payload=b"signed")
S = Stage


def case(*stages: Stage, minutes_ago: float = 1, accepted_on: str = "") -> CaseState:
    """A case at DEPT (and DEPT2 when two stages are given)."""
    departments = tuple(
        AtDepartment(name, stage, accepted_on if stage != S.SUBMITTED else "")
        for name, stage in zip((DEPT, DEPT2), stages, strict=False)
    )
    dispatched = case_pb2.DispatchedCase(case_number=NUMBER, stage=case_pb2.CASE_STAGE_SUBMITTED)
    return CaseState(
        case_number=NUMBER,
        platform_member_id=PLATFORM,
        applicant_code=COMPANY,
        overall=min(stages),
        time_limit_days=10,
        submitted_at=NOW - timedelta(minutes=minutes_ago),
        departments=departments,
        dispatch=dispatched.SerializeToString(),
        legal_representative_code=PERSON,
    )


def request(author: str) -> Request:
    return Request(author, ORIGIN, NOW)


def push(stage: int = case_pb2.CASE_STAGE_ACCEPTED, **fields: Any) -> case_pb2.StatusPush:
    fields.setdefault("event_id", "EV-1")
    fields.setdefault("sequence", 1)
    return case_pb2.StatusPush(case_number=NUMBER, stage=stage, **fields)  # type: ignore[arg-type]


def refused(decide: Any) -> tuple[Refusal, str, dict[str, str]]:
    with pytest.raises(RuleError) as caught:
        decide()
    return caught.value.refusal, caught.value.message, dict(caught.value.metadata)


# -- PushStatus ----------------------------------------------------------------------------


def test_a_first_acceptance_sets_the_working_day_deadline() -> None:
    decision = decide_push(PushRows(None, case(S.SUBMITTED)), push(), request(DEPT), CALENDAR)
    (change,) = decision.changes
    deadline = workdays.deadline(NOW.date(), 10, CALENDAR).isoformat()
    assert (change.stage, change.accepted_on, change.deadline) == (
        S.ACCEPTED,
        NOW.date().isoformat(),
        deadline,
    )
    assert (decision.result.stage, decision.result.overall, decision.overall) == (
        S.ACCEPTED,
        S.ACCEPTED,
        S.ACCEPTED,
    )
    (event,) = decision.events
    assert (event.kind, event.recipient, event.event_id, event.stage) == (
        STATUS,
        PLATFORM,
        "EV-1",
        S.ACCEPTED,
    )
    body = event.body
    assert isinstance(body, case_pb2.StatusEvent)
    assert (body.origin, body.recorded_at.ToDatetime(tzinfo=UTC)) == (ORIGIN, NOW)


def test_a_later_stage_keeps_the_deadline_and_an_unchanged_overall_is_not_written() -> None:
    joint = case(S.ACCEPTED, S.SUBMITTED, accepted_on="2026-02-27")
    decision = decide_push(
        PushRows(None, joint), push(case_pb2.CASE_STAGE_UNDER_REVIEW), request(DEPT), CALENDAR
    )
    (change,) = decision.changes
    assert (change.stage, change.accepted_on, change.deadline) == (S.UNDER_REVIEW, "", "")
    assert (decision.result.overall, decision.overall) == (S.SUBMITTED, None)


def test_a_repeated_event_id_returns_the_first_result_and_writes_nothing() -> None:
    earlier = EarlierEvent(NUMBER, int(S.ACCEPTED), int(S.ACCEPTED))
    decision = decide_push(
        PushRows(earlier, None), push(case_pb2.CASE_STAGE_UNDER_REVIEW), request(DEPT), CALENDAR
    )
    assert (decision.result.stage, decision.result.duplicate) == (S.ACCEPTED, True)
    assert (decision.changes, decision.events, decision.overall) == ((), (), None)


def test_a_completion_may_name_a_certificate_the_department_issued_to_the_applicant() -> None:
    rows = PushRows(None, case(S.APPROVED), IssuedCertificate(DEPT, COMPANY))
    completed = push(case_pb2.CASE_STAGE_COMPLETED, certificate_identifier="1.2.156.9")
    decision = decide_push(rows, completed, request(DEPT), CALENDAR)
    body = decision.events[0].body
    assert isinstance(body, case_pb2.StatusEvent)
    assert body.certificate_identifier == "1.2.156.9"


PUSH_REFUSALS: list[tuple[str, PushRows, case_pb2.StatusPush, str, Refusal, dict[str, str]]] = [
    ("no-event-id", PushRows(None, case(S.SUBMITTED)), push(event_id=""), DEPT,
     Refusal.MALFORMED, {"field": "event_id"}),
    ("event-id-too-long", PushRows(None, case(S.SUBMITTED)), push(event_id="E" * 65), DEPT,
     Refusal.MALFORMED, {"field": "event_id"}),
    ("event-id-of-another-case", PushRows(EarlierEvent("OTHER", 2, 2), None), push(), DEPT,
     Refusal.MALFORMED, {"field": "event_id"}),
    ("unknown-case", PushRows(None, None), push(), DEPT,
     Refusal.NOT_FOUND, {"case_number": NUMBER}),
    ("not-dispatched-to-you", PushRows(None, case(S.SUBMITTED)), push(), DEPT2,
     Refusal.NOT_YOUR_CASE, {"case_number": NUMBER}),
    ("unspecified-stage", PushRows(None, case(S.SUBMITTED)), push(0), DEPT,
     Refusal.MALFORMED, {"field": "stage"}),
    ("unknown-stage", PushRows(None, case(S.SUBMITTED)), push(42), DEPT,
     Refusal.MALFORMED, {"field": "stage"}),
    ("illegal-transition", PushRows(None, case(S.SUBMITTED)), push(6), DEPT,
     Refusal.STATUS_TRANSITION, {"current_stage": "SUBMITTED", "code": "ILLEGAL_TRANSITION"}),
    ("platforms-transition", PushRows(None, case(S.SUBMITTED)), push(10), DEPT,
     Refusal.STATUS_TRANSITION, {"current_stage": "SUBMITTED", "code": "NOT_YOUR_TRANSITION"}),
    ("final-stage", PushRows(None, case(S.REJECTED)), push(6), DEPT,
     Refusal.STATUS_TRANSITION, {"current_stage": "REJECTED", "code": "FINAL_STAGE"}),
    ("supplement-without-items", PushRows(None, case(S.ACCEPTED)), push(5), DEPT,
     Refusal.MALFORMED, {"field": "missing_items"}),
    ("certificate-before-completion",
     PushRows(None, case(S.ACCEPTED), IssuedCertificate(DEPT, COMPANY)),
     push(4, certificate_identifier="1.2.156.9"), DEPT,
     Refusal.MALFORMED, {"field": "certificate_identifier"}),
    ("unknown-certificate", PushRows(None, case(S.APPROVED), None),
     push(8, certificate_identifier="1.2.156.9"), DEPT,
     Refusal.MALFORMED, {"field": "certificate_identifier"}),
    ("another-issuers-certificate",
     PushRows(None, case(S.APPROVED), IssuedCertificate("issuer", COMPANY)),
     push(8, certificate_identifier="1.2.156.9"), DEPT,
     Refusal.MALFORMED, {"field": "certificate_identifier"}),
    ("certificate-of-another-holder",
     PushRows(None, case(S.APPROVED), IssuedCertificate(DEPT, OTHER)),
     push(8, certificate_identifier="1.2.156.9"), DEPT,
     Refusal.MALFORMED, {"field": "certificate_identifier"}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("rows", "message", "author", "kind", "metadata"),
    [c[1:] for c in PUSH_REFUSALS],
    ids=[c[0] for c in PUSH_REFUSALS],
)
def test_push_refusals(
    rows: PushRows,
    message: case_pb2.StatusPush,
    author: str,
    kind: Refusal,
    metadata: dict[str, str],
) -> None:
    got, text, reported = refused(lambda: decide_push(rows, message, request(author), CALENDAR))
    assert (got, reported) == (kind, metadata)
    if "current_stage" in metadata:
        assert metadata["current_stage"] in text


# -- WithdrawCase --------------------------------------------------------------------------


def withdrawal(event_id: str = "WD-1") -> case_pb2.CaseWithdrawal:
    return case_pb2.CaseWithdrawal(case_number=NUMBER, event_id=event_id, reason="撤回")


def test_a_withdrawal_reaches_the_platform_and_every_department() -> None:
    decision = decide_withdraw(
        PlatformRows(None, case(S.SUBMITTED, S.SUPPLEMENT_REQUIRED)),
        withdrawal(),
        request(PLATFORM),
    )
    assert [(c.department, c.stage) for c in decision.changes] == [
        (DEPT, S.WITHDRAWN),
        (DEPT2, S.WITHDRAWN),
    ]
    assert decision.overall == S.WITHDRAWN
    assert [(e.kind, e.recipient, e.event_id) for e in decision.events] == [
        (STATUS, PLATFORM, "WD-1"),
        (DISPATCH, DEPT, None),
        (STATUS, PLATFORM, None),
        (DISPATCH, DEPT2, None),
    ]
    dispatched = decision.events[1].body
    assert isinstance(dispatched, case_pb2.DispatchedCase)
    assert dispatched.stage == case_pb2.CASE_STAGE_WITHDRAWN


WITHDRAW_CASES = [
    # (id, case, author, refusal or None, metadata)
    ("submitted-long-ago", case(S.SUBMITTED, minutes_ago=31), PLATFORM, None, {}),
    ("accepted-within-window", case(S.ACCEPTED, minutes_ago=29), PLATFORM, None, {}),
    ("accepted-late", case(S.ACCEPTED, minutes_ago=31), PLATFORM, Refusal.STATUS_TRANSITION,
     {"current_stage": "ACCEPTED", "code": "WITHDRAW_WINDOW_CLOSED"}),
    ("one-department-late", case(S.SUBMITTED, S.UNDER_REVIEW, minutes_ago=45), PLATFORM,
     Refusal.STATUS_TRANSITION,
     {"current_stage": "UNDER_REVIEW", "code": "WITHDRAW_WINDOW_CLOSED"}),
    ("approved", case(S.APPROVED), PLATFORM, Refusal.STATUS_TRANSITION,
     {"current_stage": "APPROVED", "code": "ILLEGAL_TRANSITION"}),
    ("withdrawn", case(S.WITHDRAWN), PLATFORM, Refusal.STATUS_TRANSITION,
     {"current_stage": "WITHDRAWN", "code": "FINAL_STAGE"}),
    ("another-platform", case(S.SUBMITTED), "platform2", Refusal.NOT_YOUR_CASE,
     {"case_number": NUMBER}),
    ("unknown-case", None, PLATFORM, Refusal.NOT_FOUND, {"case_number": NUMBER}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("state", "author", "kind", "metadata"),
    [c[1:] for c in WITHDRAW_CASES],
    ids=[c[0] for c in WITHDRAW_CASES],
)
def test_withdrawal_rules(
    state: CaseState | None, author: str, kind: Refusal | None, metadata: dict[str, str]
) -> None:
    rows = PlatformRows(None, state)
    if kind is None:
        assert decide_withdraw(rows, withdrawal(), request(author)).overall == S.WITHDRAWN
        return
    got, _, reported = refused(lambda: decide_withdraw(rows, withdrawal(), request(author)))
    assert (got, reported) == (kind, metadata)


def test_a_repeated_withdrawal_and_a_bad_event_id() -> None:
    earlier = EarlierEvent(NUMBER, int(S.WITHDRAWN), int(S.WITHDRAWN))
    again = decide_withdraw(PlatformRows(earlier, None), withdrawal(), request(PLATFORM))
    assert (again.result.duplicate, again.events) == (True, ())
    got, _, reported = refused(
        lambda: decide_withdraw(
            PlatformRows(None, case(S.SUBMITTED)), withdrawal(""), request(PLATFORM)
        )
    )
    assert (got, reported) == (Refusal.MALFORMED, {"field": "event_id"})


# -- ResubmitCase --------------------------------------------------------------------------


def certificate_ref(holder: str, identifier: str = "1.2.156.1") -> CertificateReference:
    return CertificateReference(holder, certificate_pb2.CertificateRef(identifier=identifier))


def material_ref(owner: str | None, material_id: str = "MT1") -> MaterialReference:
    row = (owner, material_pb2.MaterialRef(material_id=material_id)) if owner else None
    return MaterialReference(material_id, row)


def resubmission(event_id: str = "RS-1") -> case_pb2.CaseResubmission:
    return case_pb2.CaseResubmission(case_number=NUMBER, event_id=event_id, note="已补交")


def test_a_resubmission_goes_back_to_the_departments_that_asked() -> None:
    rows = PlatformRows(
        None,
        case(S.SUPPLEMENT_REQUIRED, S.ACCEPTED, accepted_on="2026-02-27"),
        References((certificate_ref(PERSON),), (material_ref(COMPANY),)),
    )
    decision = decide_resubmit(rows, resubmission(), request(PLATFORM))
    assert [(c.department, c.stage) for c in decision.changes] == [(DEPT, S.SUBMITTED)]
    assert (decision.result.stage, decision.overall) == (S.SUBMITTED, S.SUBMITTED)
    assert [(e.kind, e.recipient, e.event_id) for e in decision.events] == [
        (DISPATCH, DEPT, None),
        (STATUS, PLATFORM, "RS-1"),
    ]
    assert decision.subject == COMPANY
    assert decision.dispatch is not None
    dispatched = case_pb2.DispatchedCase.FromString(decision.dispatch)
    assert [c.identifier for c in dispatched.certificates] == ["1.2.156.1"]
    assert [m.material_id for m in dispatched.materials] == ["MT1"]
    assert list(dispatched.resubmissions) == [ORIGIN]


RESUBMIT_REFUSALS = [
    ("no-supplement-asked", case(S.ACCEPTED), References(), Refusal.STATUS_TRANSITION,
     {"current_stage": "ACCEPTED"}),
    ("another-holders-certificate", case(S.SUPPLEMENT_REQUIRED),
     References((certificate_ref(OTHER),)), Refusal.UNBOUND, {"case_id": NUMBER}),
    ("unknown-certificate", case(S.SUPPLEMENT_REQUIRED), References((None,)), Refusal.UNBOUND,
     {"case_id": NUMBER}),
    ("another-applicants-material", case(S.SUPPLEMENT_REQUIRED),
     References((), (material_ref(OTHER),)), Refusal.UNBOUND, {"case_id": NUMBER}),
    ("unknown-material", case(S.SUPPLEMENT_REQUIRED), References((), (material_ref(None),)),
     Refusal.NOT_FOUND, {"material_id": "MT1"}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("state", "references", "kind", "metadata"),
    [c[1:] for c in RESUBMIT_REFUSALS],
    ids=[c[0] for c in RESUBMIT_REFUSALS],
)
def test_resubmission_refusals_concern_the_applicant(
    state: CaseState, references: References, kind: Refusal, metadata: dict[str, str]
) -> None:
    rows = PlatformRows(None, state, references)
    with pytest.raises(RuleError) as caught:
        decide_resubmit(rows, resubmission(), request(PLATFORM))
    error = caught.value
    assert (error.refusal, dict(error.metadata), error.subject) == (kind, metadata, COMPANY)


def test_a_resubmission_of_another_platforms_case_names_no_applicant() -> None:
    rows = PlatformRows(None, case(S.SUPPLEMENT_REQUIRED))
    with pytest.raises(RuleError) as caught:
        decide_resubmit(rows, resubmission(), request("platform2"))
    assert (caught.value.refusal, caught.value.subject) == (Refusal.NOT_YOUR_CASE, "")


# -- SubmitCase ----------------------------------------------------------------------------

ITEM = intake_pb2.Item(code="ITEM-1", departments=[DEPT, DEPT2], time_limit_days=0)
PREPARED = BoundCase(
    case_id="PC1",
    item_code=ITEM.code,
    platform_member_id=PLATFORM,
    applicant_code=COMPANY,
    legal_representative_code=PERSON,
    purpose="受理",
    expires_at=NOW + timedelta(hours=1),
    item=ITEM,
)
SUBMISSION = case_pb2.CaseSubmission(
    applicant_name="示例公司",
    form={"k": "v"},
    applicant_code=COMPANY,
    applicant_code_type=certificate_pb2.HOLDER_CODE_TYPE_USCC,
    item_code=ITEM.code,
    prepared_case_id="PC1",
)


def submit(rows: SubmitRows, author: str = PLATFORM, purpose: str = "受理") -> Any:
    return decide_submit(
        rows, SUBMISSION, request(author), case_id="PC1", purpose=purpose, case_number=NUMBER
    )


def test_a_submission_is_dispatched_to_every_department() -> None:
    rows = SubmitRows(
        PREPARED,
        registered=frozenset({DEPT, DEPT2}),
        references=References((certificate_ref(PERSON),), (material_ref(COMPANY),)),
    )
    decision = submit(rows)
    assert list(decision.receipt.departments) == [DEPT, DEPT2]
    assert (decision.case.time_limit_days, decision.case.departments) == (1, (DEPT, DEPT2))
    assert [(e.kind, e.recipient) for e in decision.events] == [(DISPATCH, DEPT), (DISPATCH, DEPT2)]
    dispatched = case_pb2.DispatchedCase.FromString(decision.case.dispatch)
    assert (dispatched.submission, dispatched.platform, dispatched.applicant_name) == (
        ORIGIN,
        PLATFORM,
        "示例公司",
    )
    assert decision.subject == COMPANY


SUBMIT_REFUSALS = [
    ("unbound", SubmitRows(None), Refusal.UNBOUND, ""),
    ("already-submitted-with-other-content",
     SubmitRows(PREPARED, SubmittedCase(NUMBER, "PC1", PLATFORM, COMPANY,
                                        envelope_pb2.Envelope(payload=b"").SerializeToString(),
                                        (DEPT, DEPT2)), frozenset({DEPT, DEPT2})),
     Refusal.STATUS_TRANSITION, COMPANY),
    ("item-gone", SubmitRows(replace(PREPARED, item=None)), Refusal.NOT_FOUND, COMPANY),
    ("no-department", SubmitRows(replace(PREPARED, item=intake_pb2.Item(code="I"))),
     Refusal.PRECONDITION, COMPANY),
    ("unregistered-department", SubmitRows(PREPARED, registered=frozenset({DEPT})),
     Refusal.PRECONDITION, COMPANY),
    ("another-holders-certificate",
     SubmitRows(PREPARED, registered=frozenset({DEPT, DEPT2}),
                references=References((certificate_ref(OTHER),))),
     Refusal.UNBOUND, COMPANY),
]  # fmt: skip


@pytest.mark.parametrize(
    ("rows", "kind", "subject"),
    [c[1:] for c in SUBMIT_REFUSALS],
    ids=[c[0] for c in SUBMIT_REFUSALS],
)
def test_submission_refusals(rows: SubmitRows, kind: Refusal, subject: str) -> None:
    with pytest.raises(RuleError) as caught:
        submit(rows)
    assert (caught.value.refusal, caught.value.subject) == (kind, subject)


# -- supervision (效能监察) ----------------------------------------------------------------


def _warning_acceptance(today: date) -> date:
    day = today
    while workdays.status_on(today, day, 10, CALENDAR) != "warning":
        day -= timedelta(days=1)
    return day


def test_supervision_warns_once_then_escalates_once() -> None:
    today = date(2026, 3, 2)
    warning_from = _warning_acceptance(today).isoformat()
    overdue = (workdays.deadline(date.fromisoformat(warning_from), 10, CALENDAR)) + timedelta(1)
    warn, late = case_pb2.SUPERVISION_KIND_WARNING, case_pb2.SUPERVISION_KIND_OVERDUE
    assert supervision_due(today, today.isoformat(), 10, False, CALENDAR) is None
    assert supervision_due(today, warning_from, 10, False, CALENDAR) == warn
    assert supervision_due(today, warning_from, 10, True, CALENDAR) is None
    assert supervision_due(overdue, warning_from, 10, True, CALENDAR) == late
    assert supervision_due(overdue, warning_from, 10, False, CALENDAR) == late


# -- idempotent submission, lookup, the resubmission cap (issue 12) -------------------------


def _submitted(submission: case_pb2.CaseSubmission) -> SubmittedCase:
    origin = envelope_pb2.Envelope(payload=submission.SerializeToString())
    return SubmittedCase(NUMBER, "PC1", PLATFORM, COMPANY, origin.SerializeToString(), (DEPT,))


def test_the_same_submission_again_answers_the_first_receipt_and_writes_nothing() -> None:
    first = case_pb2.CaseSubmission()
    first.CopyFrom(SUBMISSION)
    first.header.message_id = "an earlier message"  # a retry is a new message: header ignored
    decision = submit(SubmitRows(PREPARED, _submitted(first)))
    assert (decision.case, decision.events, decision.case_number) == (None, (), NUMBER)
    assert (decision.receipt.case_number, decision.receipt.duplicate) == (NUMBER, True)
    assert list(decision.receipt.departments) == [DEPT]
    other = case_pb2.CaseSubmission(applicant_name="另一家")
    with pytest.raises(RuleError) as caught:
        submit(SubmitRows(PREPARED, _submitted(other)))
    assert caught.value.refusal == Refusal.STATUS_TRANSITION
    assert caught.value.metadata["case_number"] == NUMBER


def test_lookup_answers_the_preparing_platform_only() -> None:
    submitted = _submitted(SUBMISSION)
    receipt = decide_lookup(PREPARED, submitted, case_id="PC1", caller=PLATFORM)
    assert (receipt.case_number, receipt.duplicate, receipt.prepared_case_id) == (
        NUMBER,
        False,
        "PC1",
    )
    for prepared, found, caller, kind in [
        (None, None, PLATFORM, Refusal.NOT_FOUND),
        (PREPARED, None, PLATFORM, Refusal.NOT_FOUND),
        (PREPARED, submitted, "platform2", Refusal.NOT_YOUR_CASE),
    ]:
        with pytest.raises(RuleError) as caught:
            decide_lookup(prepared, found, case_id="PC1", caller=caller)
        assert caught.value.refusal == kind


def test_a_case_takes_at_most_max_resubmissions() -> None:
    state = case(S.SUPPLEMENT_REQUIRED)
    dispatched = case_pb2.DispatchedCase(
        case_number=NUMBER, resubmissions=[ORIGIN] * MAX_RESUBMISSIONS
    )
    rows = PlatformRows(None, replace(state, dispatch=dispatched.SerializeToString()))
    resubmission = case_pb2.CaseResubmission(case_number=NUMBER, event_id="E-CAP")
    with pytest.raises(RuleError) as caught:
        decide_resubmit(rows, resubmission, request(PLATFORM))
    assert caught.value.refusal == Refusal.PRECONDITION
    assert dict(caught.value.metadata) == {
        "field": "resubmissions",
        "limit": str(MAX_RESUBMISSIONS),
    }


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("applicant_code", PERSON),
        ("item_code", "ITEM-2"),
        ("prepared_case_id", "PC2"),
        ("applicant_code_type", certificate_pb2.HOLDER_CODE_TYPE_CITIZEN_ID),
    ],
)
def test_a_submission_signing_another_case_is_refused_naming_the_field(
    field: str, value: Any
) -> None:
    other = case_pb2.CaseSubmission()
    other.CopyFrom(SUBMISSION)
    setattr(other, field, value)
    with pytest.raises(RuleError) as caught:
        decide_submit(
            SubmitRows(PREPARED),
            other,
            request(PLATFORM),
            case_id="PC1",
            purpose="受理",
            case_number=NUMBER,
        )
    expected = Refusal.MALFORMED if field == "applicant_code_type" else Refusal.UNBOUND
    assert (caught.value.refusal, caught.value.metadata["field"]) == (expected, field)


@pytest.mark.parametrize("sequence", [0, 2, 5])
def test_a_push_that_skips_or_reuses_a_number_is_refused(sequence: int) -> None:
    rows = PushRows(None, case(S.SUBMITTED))
    with pytest.raises(RuleError) as caught:
        decide_push(rows, push(sequence=sequence), request(DEPT), CALENDAR)
    assert caught.value.refusal == Refusal.STATUS_TRANSITION
    assert caught.value.metadata["field"] == "sequence"
    assert caught.value.metadata["expected_sequence"] == "1"


def test_a_push_records_its_number() -> None:
    decision = decide_push(PushRows(None, case(S.SUBMITTED)), push(), request(DEPT), CALENDAR)
    assert [c.sequence for c in decision.changes] == [1]
