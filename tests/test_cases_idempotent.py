"""Idempotent submission over a running hub (issue 12): a SubmitCase whose answer was lost is
retried and answers the same case, and the platform looks its case up by prepared case
(LookupCase) — on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from cases_world import (
    COMPANY,
    COMPANY_NAME,
    ITEM,
    JOINT_ITEM,
    PURPOSE,
    Code,
    Desk,
    count_events,
    race,
)
from helpers import refused
from sqlalchemy import func, select

from xhub.hub.core.db import CaseEventRow, CaseRow
from xhub.v1 import case_pb2


def _cases(desk: Desk) -> int:
    with desk.kit.session() as session:
        return int(session.scalar(select(func.count()).select_from(CaseRow)) or 0)


def test_a_lost_submit_answer_is_retried_and_names_the_same_case(any_desk: Desk) -> None:
    desk = any_desk
    platform = desk.platform
    checklist = platform.prepare_case(JOINT_ITEM, COMPANY, purpose=PURPOSE)
    submission = case_pb2.CaseSubmission(
        applicant_name=COMPANY_NAME,
        form={"经营面积": "80"},
        applicant_code=checklist.applicant_code,
        applicant_code_type=checklist.applicant_code_type,
        item_code=checklist.item.code,
        prepared_case_id=checklist.case_id,
    )
    # The first attempt reaches the hub, but its answer never reaches the platform.
    lost = case_pb2.CaseSubmission()
    lost.CopyFrom(submission)
    envelope = platform.transport.seal(lost, case_id=checklist.case_id, purpose=PURPOSE)
    platform.transport.cases.SubmitCase(case_pb2.SubmitCaseRequest(envelope=envelope), timeout=10)
    # The platform retries the same submission: the first case, not a refusal.
    retried = platform.submit_case(
        checklist.case_id, purpose=PURPOSE, applicant_name=COMPANY_NAME, form={"经营面积": "80"}
    )
    assert retried.duplicate and retried.case_number
    assert retried.prepared_case_id == checklist.case_id
    assert list(retried.departments) == [
        desk.kit.member_id("department"),
        desk.kit.member_id("department2"),
    ]
    again = platform.submit_case(
        checklist.case_id, purpose=PURPOSE, applicant_name=COMPANY_NAME, form={"经营面积": "80"}
    )
    assert again.case_number == retried.case_number
    looked_up = platform.lookup_case(checklist.case_id)
    assert (looked_up.case_number, looked_up.duplicate) == (retried.case_number, False)
    assert list(looked_up.departments) == list(retried.departments)
    # One case, dispatched once to each of its two departments.
    assert _cases(desk) == 1
    assert count_events(desk.kit, CaseEventRow.kind == "dispatch") == 2


def test_concurrent_retries_of_one_submission_make_one_case(any_desk: Desk) -> None:
    desk = any_desk
    checklist = desk.platform.prepare_case(ITEM, COMPANY, purpose=PURPOSE)
    answers = race(
        4,
        lambda _: desk.platform.submit_case(
            checklist.case_id, purpose=PURPOSE, applicant_name=COMPANY_NAME
        ),
    )
    assert all(isinstance(a, case_pb2.CaseReceipt) for a in answers), answers
    assert len({a.case_number for a in answers}) == 1
    assert sum(not a.duplicate for a in answers) == 1
    assert _cases(desk) == 1
    assert count_events(desk.kit, CaseEventRow.kind == "dispatch") == 1


def test_lookup_answers_the_submissions_receipt(shared_desk: Desk) -> None:
    desk = shared_desk
    receipt = desk.submit()
    assert not receipt.duplicate
    found = desk.platform.lookup_case(receipt.prepared_case_id)
    assert (found.case_number, list(found.departments), found.prepared_case_id) == (
        receipt.case_number,
        list(receipt.departments),
        receipt.prepared_case_id,
    )


@pytest.mark.parametrize(
    ("who", "which", "code", "reason"),
    [
        pytest.param("platform2", "submitted", Code.PERMISSION_DENIED, "NOT_YOUR_CASE", id="other"),
        pytest.param("platform", "prepared", Code.NOT_FOUND, "NOT_FOUND", id="not-submitted"),
        pytest.param("platform", "PC-NO-SUCH", Code.NOT_FOUND, "NOT_FOUND", id="unknown"),
        pytest.param("department", "submitted", Code.PERMISSION_DENIED, "ROLE_REQUIRED", id="dept"),
        pytest.param("platform", "PC\x00X", Code.INVALID_ARGUMENT, "INVALID_FIELD", id="nul"),
        pytest.param("platform", "P" * 65, Code.INVALID_ARGUMENT, "INVALID_FIELD", id="long"),
    ],
)
def test_lookup_is_for_the_platform_that_prepared_the_case(
    shared_desk: Desk, who: str, which: str, code: Code, reason: str
) -> None:
    desk = shared_desk
    prepared = desk.platform.prepare_case(ITEM, COMPANY, purpose=PURPOSE).case_id
    submitted = desk.submit().prepared_case_id
    case_id = {"submitted": submitted, "prepared": prepared}.get(which, which)
    client = desk.kit.client(who)
    error = refused(lambda: client.lookup_case(case_id), code, reason)
    if reason == "INVALID_FIELD":
        assert error.metadata["field"] == "prepared_case_id"
        assert error.metadata["limit"] == "64"
