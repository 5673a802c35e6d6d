"""WithdrawCase (撤回) and ResubmitCase (补正后重新提交) over a running hub: withdrawal is free
before acceptance, bounded by a window after it, all or nothing across departments and
idempotent; a resubmission returns the case to the departments that asked; a department
verifies what the hub forwards against the platform's own signature (端到端核验)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path

import grpc
import pytest
from cases_world import (
    ACCEPTED,
    APPROVED,
    COMPANY,
    COMPANY_NAME,
    JOINT_ITEM,
    SUBMITTED,
    SUPPLEMENT,
    UNDER_REVIEW,
    WITHDRAWN,
    Code,
    Desk,
    Stage,
    age,
    certificate,
    count_events,
    drain,
    event_id,
    signer_key,
    stage_at,
    upload,
)
from helpers import refused

from xhub.connectors import BadResponseError, XhubError
from xhub.hub.core.db import CaseEventRow
from xhub.protocol.envelope import seal, verify_signature_by
from xhub.v1 import case_pb2

# -- WithdrawCase ------------------------------------------------------------------------------


def test_withdrawal_before_acceptance_reaches_every_department(any_desk: Desk) -> None:
    desk = any_desk
    case = desk.submit(JOINT_ITEM).case_number
    result = desk.platform.withdraw_case(case, event_id="wd-1", reason="申请人撤回")
    assert (result.case_number, result.stage, result.overall, result.duplicate) == (
        case,
        WITHDRAWN,
        WITHDRAWN,
        False,
    )
    for client in (desk.department, desk.department2):
        dispatched = drain(client.subscribe_cases)
        assert [(d.case_number, d.stage) for d in dispatched] == [
            (case, SUBMITTED),
            (case, WITHDRAWN),
        ]
        assert dispatched[0].cursor < dispatched[1].cursor
    status = drain(desk.platform.subscribe_status)
    assert sorted(e.department for e in status) == sorted(
        desk.kit.member_id(k) for k in ("department", "department2")
    )
    for event in status:
        assert (event.stage, event.overall, event.note) == (WITHDRAWN, WITHDRAWN, "申请人撤回")
        platform_key = signer_key(desk.platform, desk.kit.member_id("platform"), event.origin)
        verify_signature_by(event.origin, platform_key)
    error = refused(
        lambda: desk.department.push_status(case, ACCEPTED, event_id=event_id()),
        Code.FAILED_PRECONDITION,
        "STATUS_TRANSITION",
    )
    assert (error.metadata["current_stage"], error.metadata["code"]) == (
        "WITHDRAWN",
        "FINAL_STAGE",
    )


@pytest.mark.parametrize(
    ("before", "minutes_ago", "current", "why"),
    [
        pytest.param((), 31, None, None, id="submitted-long-ago"),
        pytest.param((SUPPLEMENT,), 31, None, None, id="waiting-for-supplement"),
        pytest.param((ACCEPTED,), 29, None, None, id="accepted-within-window"),
        pytest.param((ACCEPTED, UNDER_REVIEW), 1, None, None, id="under-review-within"),
        pytest.param((ACCEPTED,), 31, "ACCEPTED", "WITHDRAW_WINDOW_CLOSED", id="accepted-late"),
        pytest.param(
            (ACCEPTED, UNDER_REVIEW),
            45,
            "UNDER_REVIEW",
            "WITHDRAW_WINDOW_CLOSED",
            id="under-review-late",
        ),
        pytest.param(
            (ACCEPTED, UNDER_REVIEW, APPROVED),
            1,
            "APPROVED",
            "ILLEGAL_TRANSITION",
            id="approved",
        ),
    ],
)
def test_withdrawal_window(
    desk: Desk,
    before: tuple[Stage, ...],
    minutes_ago: float,
    current: str | None,
    why: str | None,
) -> None:
    case = desk.submit().case_number
    desk.walk(case, before)
    age(desk.kit, case, minutes_ago)
    events = count_events(desk.kit)
    withdraw = partial(desk.platform.withdraw_case, case, event_id="wd-2", reason="撤回")
    if current is None:
        assert withdraw().overall == WITHDRAWN
        assert stage_at(desk.kit, case, "department") == "WITHDRAWN"
        return
    error = refused(withdraw, Code.FAILED_PRECONDITION, "STATUS_TRANSITION")
    assert (error.metadata["current_stage"], error.metadata["code"]) == (current, why)
    assert current in error.message
    assert count_events(desk.kit) == events
    assert stage_at(desk.kit, case, "department") == current
    assert [d.stage for d in drain(desk.department.subscribe_cases)] == [SUBMITTED]


def test_withdrawal_is_all_or_nothing_across_departments(desk: Desk) -> None:
    case = desk.submit(JOINT_ITEM).case_number
    desk.department.push_status(case, ACCEPTED, event_id=event_id())
    age(desk.kit, case, 31)
    refused(
        lambda: desk.platform.withdraw_case(case, event_id="wd-3", reason="撤回"),
        Code.FAILED_PRECONDITION,
        "STATUS_TRANSITION",
    )
    assert stage_at(desk.kit, case, "department") == "ACCEPTED"
    assert stage_at(desk.kit, case, "department2") == "SUBMITTED"
    assert [d.stage for d in drain(desk.department2.subscribe_cases)] == [SUBMITTED]


def test_withdrawal_is_idempotent_by_event_id(desk: Desk) -> None:
    case = desk.submit(JOINT_ITEM).case_number
    first = desk.platform.withdraw_case(case, event_id="wd-4", reason="撤回")
    events = count_events(desk.kit)
    again = desk.platform.withdraw_case(case, event_id="wd-4", reason="撤回")
    assert (again.stage, again.overall, again.duplicate) == (first.stage, first.overall, True)
    assert count_events(desk.kit) == events
    error = refused(
        lambda: desk.platform.withdraw_case(case, event_id="wd-5", reason="再次撤回"),
        Code.FAILED_PRECONDITION,
        "STATUS_TRANSITION",
    )
    assert error.metadata["code"] == "FINAL_STAGE"
    assert [d.stage for d in drain(desk.department.subscribe_cases)] == [SUBMITTED, WITHDRAWN]


@pytest.mark.parametrize("who", ["platform2", "department", "auditor"])
def test_only_the_cases_platform_withdraws_it(desk: Desk, who: str) -> None:
    case = desk.submit().case_number
    with pytest.raises(XhubError) as caught:
        desk.kit.client(who).withdraw_case(case, event_id="wd-6", reason="撤回")
    assert caught.value.code == Code.PERMISSION_DENIED, str(caught.value)
    assert stage_at(desk.kit, case, "department") == "SUBMITTED"
    assert count_events(desk.kit, CaseEventRow.kind == "status") == 0


# -- 补正后重新提交 (resubmission after a supplement request) ----------------------------


def test_resubmission_returns_the_case_to_the_department_that_asked(desk: Desk) -> None:
    case_number = desk.submit().case_number
    desk.department.push_status(
        case_number, SUPPLEMENT, event_id="ask-1", missing_items=["场所平面图"]
    )
    before = count_events(desk.kit, CaseEventRow.case_number == case_number)
    result = desk.platform.resubmit_case(case_number, event_id="again-1", note="已补交平面图")
    assert (result.stage, result.duplicate) == (SUBMITTED, False)
    # A repeat is a duplicate and adds nothing.
    assert desk.platform.resubmit_case(case_number, event_id="again-1").duplicate
    dispatched = [
        case
        for case in desk.department.subscribe_cases(0, timeout=2)
        if case.case_number == case_number
    ]
    assert [case.stage for case in dispatched] == [SUBMITTED, SUBMITTED]
    # The department can accept the resubmitted case.
    accepted = desk.department.push_status(case_number, ACCEPTED, event_id="acc-after")
    assert accepted.stage == ACCEPTED
    assert count_events(desk.kit, CaseEventRow.case_number == case_number) == before + 3


# -- 端到端核验: a department checks what the hub forwards against the platform's signature --


def _dispatched_pair(desk: Desk, tmp_path: Path) -> tuple[case_pb2.DispatchedCase, ...]:
    """A case dispatched, then dispatched again after a supplement with one more material."""
    licence = certificate(desk.kit, "issuer", number="440101000777666")
    desk.kit.client("issuer").publish_certificate(licence)
    plan = upload(desk, tmp_path, b"%PDF plan " + uuid.uuid4().bytes, COMPANY)
    case_number = desk.submit(
        certificate_identifiers=[licence.identifier],
        material_ids=[plan],
        form={"经营场所": "广州市荔湾区示例路1号"},
    ).case_number
    desk.department.push_status(
        case_number, SUPPLEMENT, event_id=event_id(), missing_items=["场所平面图"]
    )
    extra = upload(desk, tmp_path, b"%PDF floor plan " + uuid.uuid4().bytes, COMPANY)
    desk.platform.resubmit_case(case_number, event_id=event_id(), material_ids=[extra])
    first, again = drain(desk.department.subscribe_cases)
    assert [m.material_id for m in again.materials] == [plan, extra]
    return first, again


def test_a_department_verifies_a_dispatched_case_end_to_end(desk: Desk, tmp_path: Path) -> None:
    first, again = _dispatched_pair(desk, tmp_path)
    for dispatched in (first, again):
        submission = desk.department.verify_submission(dispatched)
        assert dict(submission.form) == {"经营场所": "广州市荔湾区示例路1号"}
        assert submission.applicant_name == COMPANY_NAME
    assert len(first.resubmissions) == 0 and len(again.resubmissions) == 1


def _other_members_message(desk: Desk, case: case_pb2.DispatchedCase) -> None:
    """The same submission, signed by a department key instead of the platform's."""
    payload = case_pb2.CaseSubmission.FromString(case.submission.payload)
    case.submission.CopyFrom(seal(payload, desk.kit.bundle("department").signer))


TAMPERING: dict[str, Callable[[Desk, case_pb2.DispatchedCase], object]] = {
    "form changed": lambda desk, case: case.form.__setitem__("经营场所", "另一地址"),
    "applicant renamed": lambda desk, case: setattr(case, "applicant_name", "冒名公司"),
    "certificate added": lambda desk, case: case.certificates.add(identifier="1.2.156.x"),
    "material dropped": lambda desk, case: case.materials.pop(),
    "resubmission dropped": lambda desk, case: case.resubmissions.pop(),
    "another platform named": lambda desk, case: setattr(
        case, "platform", desk.kit.member_id("department")
    ),
    "payload edited": lambda desk, case: setattr(
        case.submission, "payload", case.submission.payload[:-1] + b"\x00"
    ),
    "signed by another member": _other_members_message,
    "foreign message as resubmission": lambda desk, case: case.resubmissions.append(
        case.submission
    ),
}


@pytest.mark.parametrize("tampering", sorted(TAMPERING))
def test_a_case_altered_after_the_platform_signed_it_is_refused(
    desk: Desk, tmp_path: Path, tampering: str
) -> None:
    _, again = _dispatched_pair(desk, tmp_path)
    altered = case_pb2.DispatchedCase()
    altered.CopyFrom(again)
    TAMPERING[tampering](desk, altered)
    assert altered != again
    with pytest.raises(BadResponseError):
        desk.department.verify_submission(altered)
    desk.department.verify_submission(again)  # the genuine case still verifies


def test_resubmission_needs_a_supplement_request(desk: Desk) -> None:
    case_number = desk.submit().case_number
    with pytest.raises(XhubError) as caught:
        desk.platform.resubmit_case(case_number, event_id="early")
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.metadata["current_stage"] == "SUBMITTED"
