"""PushStatus over a running hub (DESIGN.md §5, flow 5): the stage machine (a refusal names
the current stage), only the departments handling a case push, pushes are idempotent by
(author, event id) even when retried concurrently, the overall status of a joint case, and
a completion names a certificate the department issued."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from functools import partial
from typing import Any

import pytest
from cases_world import (
    ACCEPTED,
    APPROVED,
    COMPLETED,
    DELIVERED,
    HAPPY_PATH,
    JOINT_ITEM,
    NOT_ACCEPTED,
    PERMIT_TYPE,
    REJECTED,
    SUBMITTED,
    SUPPLEMENT,
    UNDER_REVIEW,
    WITHDRAWN,
    Code,
    Desk,
    S,
    Stage,
    certificate,
    count_events,
    drain,
    event_id,
    extras,
    name,
    race,
    stage_at,
)
from helpers import refused

from xhub.connectors import XhubError
from xhub.hub.cases import calendar as workdays
from xhub.hub.core.db import CaseDepartmentRow, CaseEventRow, CaseRow
from xhub.v1 import case_pb2

# -- PushStatus: the stage machine -------------------------------------------------------------


def test_a_case_walks_the_happy_path_and_the_platform_sees_each_step(any_desk: Desk) -> None:
    desk = any_desk
    case = desk.submit().case_number
    results = desk.walk(case, HAPPY_PATH)
    assert [(r.stage, r.overall, r.duplicate) for r in results] == [
        (s, s, False) for s in HAPPY_PATH
    ]
    events = drain(desk.platform.subscribe_status)
    assert [(e.case_number, e.stage, e.overall) for e in events] == [
        (case, s, s) for s in HAPPY_PATH
    ]
    assert all(e.department == desk.kit.member_id("department") for e in events)
    calendar = workdays.WorkCalendar.from_file(workdays.SAMPLE_CN_2026)
    with desk.kit.session() as session:
        row = session.get(CaseDepartmentRow, (case, desk.kit.member_id("department")))
        assert row is not None
        assert row.accepted_on == datetime.now(UTC).date().isoformat()
        # Set once on acceptance (10 working days), kept through the later stages.
        accepted = date.fromisoformat(row.accepted_on)
        assert row.deadline == workdays.deadline(accepted, 10, calendar).isoformat()
        assert row.stage == DELIVERED
        assert abs(datetime.now(UTC) - row.updated_at) < timedelta(minutes=5)
        stored = session.get(CaseRow, case)
        assert stored is not None and stored.overall == DELIVERED


@pytest.mark.parametrize(
    ("before", "proposed", "current", "why"),
    [
        ((), UNDER_REVIEW, "SUBMITTED", "ILLEGAL_TRANSITION"),
        ((), APPROVED, "SUBMITTED", "ILLEGAL_TRANSITION"),
        ((), DELIVERED, "SUBMITTED", "ILLEGAL_TRANSITION"),
        ((), SUBMITTED, "SUBMITTED", "ILLEGAL_TRANSITION"),
        ((), WITHDRAWN, "SUBMITTED", "NOT_YOUR_TRANSITION"),
        ((ACCEPTED,), ACCEPTED, "ACCEPTED", "ILLEGAL_TRANSITION"),
        ((ACCEPTED,), COMPLETED, "ACCEPTED", "ILLEGAL_TRANSITION"),
        ((ACCEPTED, UNDER_REVIEW, APPROVED), REJECTED, "APPROVED", "ILLEGAL_TRANSITION"),
        ((SUPPLEMENT,), ACCEPTED, "SUPPLEMENT_REQUIRED", "ILLEGAL_TRANSITION"),
        ((SUPPLEMENT,), SUBMITTED, "SUPPLEMENT_REQUIRED", "NOT_YOUR_TRANSITION"),
        ((NOT_ACCEPTED,), ACCEPTED, "NOT_ACCEPTED", "FINAL_STAGE"),
        ((ACCEPTED, UNDER_REVIEW, REJECTED), APPROVED, "REJECTED", "FINAL_STAGE"),
        (HAPPY_PATH, COMPLETED, "DELIVERED", "FINAL_STAGE"),
    ],
    ids=lambda v: name(v) if isinstance(v, int) else None,
)
def test_an_illegal_transition_names_the_current_stage(
    desk: Desk, before: tuple[Stage, ...], proposed: Stage, current: str, why: str
) -> None:
    case = desk.submit().case_number
    desk.walk(case, before)
    events = count_events(desk.kit)
    error = refused(
        lambda: desk.department.push_status(
            case, proposed, event_id=event_id(), **extras(proposed)
        ),
        Code.FAILED_PRECONDITION,
        "STATUS_TRANSITION",
    )
    assert error.metadata["current_stage"] == current
    assert error.metadata["code"] == why
    assert current in error.message
    assert count_events(desk.kit) == events
    assert stage_at(desk.kit, case, "department") == current


@pytest.mark.parametrize(
    ("changes", "field_name"),
    [
        pytest.param({"stage": S.CASE_STAGE_UNSPECIFIED}, "stage", id="unspecified-stage"),
        pytest.param({"stage": 42}, "stage", id="unknown-stage"),
        pytest.param({"event_id": ""}, "event_id", id="no-event-id"),
        pytest.param({"event_id": "E" * 65}, "event_id", id="event-id-too-long"),
        pytest.param({"stage": SUPPLEMENT}, "missing_items", id="supplement-without-items"),
    ],
)
def test_a_malformed_push_is_invalid_argument(
    desk: Desk, changes: dict[str, Any], field_name: str
) -> None:
    case = desk.submit().case_number
    fields: dict[str, Any] = {"stage": ACCEPTED, "event_id": event_id(), **changes}
    stage = fields.pop("stage")
    error = refused(
        lambda: desk.department.push_status(case, stage, **fields),
        Code.INVALID_ARGUMENT,
        "INVALID_FIELD",
    )
    assert error.metadata.get("field") == field_name
    assert count_events(desk.kit, CaseEventRow.kind == "status") == 0
    assert stage_at(desk.kit, case, "department") == "SUBMITTED"


def test_a_supplement_carries_its_missing_items_to_the_platform(desk: Desk) -> None:
    case = desk.submit().case_number
    desk.walk(case, [ACCEPTED])
    result = desk.department.push_status(
        case, SUPPLEMENT, event_id=event_id(), missing_items=["营业执照副本", "场所平面图"]
    )
    assert (result.stage, result.overall) == (SUPPLEMENT, SUPPLEMENT)
    last = drain(desk.platform.subscribe_status)[-1]
    assert (last.stage, list(last.missing_items)) == (SUPPLEMENT, ["营业执照副本", "场所平面图"])


@pytest.mark.parametrize(
    ("pusher", "reason"),
    [
        pytest.param("department2", None, id="department-not-handling-the-case"),
        pytest.param("platform", "ROLE_REQUIRED", id="platform"),
        pytest.param("issuer", "ROLE_REQUIRED", id="issuer"),
        pytest.param("auditor", "ROLE_REQUIRED", id="auditor"),
    ],
)
def test_only_a_handling_department_pushes_status(
    desk: Desk, pusher: str, reason: str | None
) -> None:
    case = desk.submit().case_number
    client = desk.kit.client(pusher)
    with pytest.raises(XhubError) as caught:
        client.push_status(case, ACCEPTED, event_id=event_id())
    assert caught.value.code == Code.PERMISSION_DENIED, str(caught.value)
    if reason:
        assert caught.value.reason_name == reason
    assert count_events(desk.kit, CaseEventRow.kind == "status") == 0
    assert stage_at(desk.kit, case, "department") == "SUBMITTED"
    # The handling department is not blocked by the refusal.
    assert desk.department.push_status(case, ACCEPTED, event_id=event_id()).stage == ACCEPTED


def test_a_push_for_an_unknown_case_is_not_found(desk: Desk) -> None:
    refused(
        lambda: desk.department.push_status("20260101NOSUCHCASE00", ACCEPTED, event_id=event_id()),
        Code.NOT_FOUND,
        "NOT_FOUND",
    )


# -- PushStatus: idempotency -------------------------------------------------------------------


def test_a_repeated_push_returns_the_first_result_and_adds_nothing(desk: Desk) -> None:
    case = desk.submit().case_number
    first = desk.department.push_status(case, ACCEPTED, event_id="dept-0001", note="受理")
    assert (first.stage, first.overall, first.duplicate) == (ACCEPTED, ACCEPTED, False)
    again = desk.department.push_status(case, ACCEPTED, event_id="dept-0001", note="受理")
    assert (again.case_number, again.stage, again.overall, again.duplicate) == (
        case,
        ACCEPTED,
        ACCEPTED,
        True,
    )
    # Same id, other content: still the first result, and the stage does not move.
    other = desk.department.push_status(case, UNDER_REVIEW, event_id="dept-0001")
    assert (other.stage, other.duplicate) == (ACCEPTED, True)
    assert stage_at(desk.kit, case, "department") == "ACCEPTED"
    assert count_events(desk.kit, CaseEventRow.kind == "status") == 1
    assert [e.event_id for e in drain(desk.platform.subscribe_status)] == ["dept-0001"]


def test_an_event_id_reused_for_another_case_is_refused(desk: Desk) -> None:
    first, second = desk.submit().case_number, desk.submit().case_number
    desk.department.push_status(first, ACCEPTED, event_id="dept-0002")
    error = refused(
        lambda: desk.department.push_status(second, ACCEPTED, event_id="dept-0002"),
        Code.INVALID_ARGUMENT,
        "INVALID_FIELD",
    )
    assert error.metadata.get("field") == "event_id"
    assert stage_at(desk.kit, second, "department") == "SUBMITTED"
    assert count_events(desk.kit, CaseEventRow.kind == "status") == 1


def test_event_ids_belong_to_their_author(desk: Desk) -> None:
    """Two departments of a joint case may happen to choose the same event id."""
    case = desk.submit(JOINT_ITEM).case_number
    a = desk.department.push_status(case, ACCEPTED, event_id="0001")
    b = desk.department2.push_status(case, ACCEPTED, event_id="0001")
    assert (a.duplicate, b.duplicate) == (False, False)
    assert (a.overall, b.overall) == (SUBMITTED, ACCEPTED)
    assert count_events(desk.kit, CaseEventRow.kind == "status") == 2


def test_concurrent_retries_of_one_push_apply_it_once(any_desk: Desk) -> None:
    """A department retrying while its first attempt is still in flight (at-least-once)."""
    desk = any_desk
    case = desk.submit().case_number
    clients = [desk.kit.client("department") for _ in range(6)]
    outcomes = race(
        len(clients), lambda i: clients[i].push_status(case, ACCEPTED, event_id="dept-race")
    )
    errors = [str(o) for o in outcomes if isinstance(o, Exception)]
    assert not errors, f"a retried push must not fail: {errors}"
    assert sorted(o.duplicate for o in outcomes) == [False] + [True] * (len(clients) - 1)
    assert {(o.stage, o.overall) for o in outcomes} == {(ACCEPTED, ACCEPTED)}
    assert count_events(desk.kit, CaseEventRow.kind == "status") == 1


def test_concurrent_pushes_cannot_cheat_the_stage_machine(any_desk: Desk) -> None:
    """Two pushes of ACCEPTED with different ids at once: one applies, one is refused."""
    desk = any_desk
    case = desk.submit().case_number
    clients = [desk.kit.client("department") for _ in range(6)]
    outcomes = race(
        len(clients), lambda i: clients[i].push_status(case, ACCEPTED, event_id=f"accept-{i}")
    )
    applied = [o for o in outcomes if isinstance(o, case_pb2.StatusPushResult)]
    refusals = [o for o in outcomes if isinstance(o, XhubError)]
    assert len(applied) == 1, (
        f"ACCEPTED applied {len(applied)} times from SUBMITTED; "
        f"{count_events(desk.kit, CaseEventRow.kind == 'status')} ACCEPTED events recorded"
    )
    assert len(refusals) == len(clients) - 1, [str(r) for r in refusals]
    assert {(e.code, e.metadata.get("current_stage")) for e in refusals} == {
        (Code.FAILED_PRECONDITION, "ACCEPTED")
    }
    assert count_events(desk.kit, CaseEventRow.kind == "status") == 1


def test_a_push_out_of_order_is_refused_then_applies_in_order(desk: Desk) -> None:
    case = desk.submit().case_number
    desk.department.push_status(case, ACCEPTED, event_id="o-1")
    # APPROVED (o-3) overtakes UNDER_REVIEW (o-2), e.g. two connector threads.
    error = refused(
        lambda: desk.department.push_status(case, APPROVED, event_id="o-3"),
        Code.FAILED_PRECONDITION,
        "STATUS_TRANSITION",
    )
    assert error.metadata["current_stage"] == "ACCEPTED"
    assert desk.department.push_status(case, UNDER_REVIEW, event_id="o-2").stage == UNDER_REVIEW
    # The refused id recorded nothing: retried in order it applies (not a duplicate).
    retried = desk.department.push_status(case, APPROVED, event_id="o-3")
    assert (retried.stage, retried.duplicate) == (APPROVED, False)
    events = drain(desk.platform.subscribe_status)
    assert [(e.event_id, e.stage) for e in events] == [
        ("o-1", ACCEPTED),
        ("o-2", UNDER_REVIEW),
        ("o-3", APPROVED),
    ]


OVERALL_STORIES = {
    "both-deliver": [
        ("department", ACCEPTED, SUBMITTED),
        ("department2", ACCEPTED, ACCEPTED),
        ("department", UNDER_REVIEW, ACCEPTED),
        ("department", APPROVED, ACCEPTED),
        ("department2", UNDER_REVIEW, UNDER_REVIEW),
        ("department2", APPROVED, APPROVED),
        ("department", COMPLETED, APPROVED),
        ("department", DELIVERED, APPROVED),
        ("department2", COMPLETED, COMPLETED),
        ("department2", DELIVERED, DELIVERED),
    ],
    "one-asks-for-a-supplement": [
        ("department", ACCEPTED, SUBMITTED),
        ("department2", SUPPLEMENT, SUPPLEMENT),
        ("department", UNDER_REVIEW, SUPPLEMENT),
        ("department", APPROVED, SUPPLEMENT),
    ],
    "one-refusal-sinks-the-case": [
        ("department", ACCEPTED, SUBMITTED),
        ("department2", NOT_ACCEPTED, NOT_ACCEPTED),
        ("department", UNDER_REVIEW, NOT_ACCEPTED),
        ("department", REJECTED, REJECTED),
    ],
}


@pytest.mark.parametrize("story", list(OVERALL_STORIES))
def test_overall_status_of_a_joint_case(desk: Desk, story: str) -> None:
    case = desk.submit(JOINT_ITEM).case_number
    steps = OVERALL_STORIES[story]
    clients = {"department": desk.department, "department2": desk.department2}
    for who, stage, overall in steps:
        result = clients[who].push_status(case, stage, event_id=event_id(), **extras(stage))
        assert (who, result.stage, result.overall) == (who, stage, overall)
    events = drain(desk.platform.subscribe_status)
    assert [(e.department, e.stage, e.overall) for e in events] == [
        (desk.kit.member_id(who), stage, overall) for who, stage, overall in steps
    ]
    with desk.kit.session() as session:
        row = session.get(CaseRow, case)
        assert row is not None and row.overall == steps[-1][2]


def test_completion_names_a_certificate_the_department_issued(desk: Desk) -> None:
    case = desk.submit().case_number
    desk.walk(case, [ACCEPTED, UNDER_REVIEW, APPROVED])
    permit = certificate(desk.kit, "department", type_code=PERMIT_TYPE, type_name="食品经营许可证")
    desk.department.publish_certificate(permit)
    licence = certificate(desk.kit, "issuer")
    desk.kit.client("issuer").publish_certificate(licence)
    # Another last character than the permit's own (a fixed "0" is the permit itself 1 time in 10).
    other_last = "1" if permit.identifier.endswith("0") else "0"
    for wrong in (licence.identifier, permit.identifier[:-1] + other_last, "not-an-identifier"):
        refused(
            partial(
                desk.department.push_status,
                case,
                COMPLETED,
                event_id=event_id(),
                certificate_identifier=wrong,
            ),
            Code.INVALID_ARGUMENT,
            "INVALID_FIELD",
        )
    assert stage_at(desk.kit, case, "department") == "APPROVED"
    done = desk.department.push_status(
        case, COMPLETED, event_id="done-1", certificate_identifier=permit.identifier
    )
    assert done.stage == COMPLETED
    last = drain(desk.platform.subscribe_status)[-1]
    assert (last.event_id, last.stage, last.certificate_identifier) == (
        "done-1",
        COMPLETED,
        permit.identifier,
    )
