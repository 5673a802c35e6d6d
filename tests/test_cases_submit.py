"""SubmitCase over a running hub (DESIGN.md §6 flow 4): for platforms, bound to the case they
prepared, once per prepared case, dispatched to every handling department (并联审批) with
references, never copies."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from cases_world import (
    COMPANY,
    ITEM,
    JOINT_ITEM,
    OTHER_COMPANY,
    PURPOSE,
    SUBMITTED,
    Code,
    Desk,
    certificate,
    count_events,
    drain,
    signer_key,
    upload,
)
from helpers import refused
from sqlalchemy import func, select

from xhub.hub.core.db import CaseDepartmentRow, CaseEventRow, CaseRow
from xhub.protocol.envelope import parse_verified, verify_signature_by
from xhub.v1 import case_pb2

# -- SubmitCase --------------------------------------------------------------------------------


@pytest.mark.parametrize("member", ["department", "issuer", "auditor"])
def test_submit_case_is_for_platforms_only(shared_desk: Desk, member: str) -> None:
    desk = shared_desk
    checklist = desk.platform.prepare_case(ITEM, COMPANY, purpose=PURPOSE)
    other = desk.kit.client(member)
    refused(
        lambda: other.submit_case(checklist.case_id, purpose=PURPOSE),
        Code.PERMISSION_DENIED,
        "ROLE_REQUIRED",
    )
    assert count_events(desk.kit) == 0


@pytest.mark.parametrize(
    ("submitter", "case_id", "purpose"),
    [
        pytest.param("platform2", None, PURPOSE, id="another-platforms-case"),
        pytest.param("platform", None, "其他用途", id="wrong-purpose"),
        pytest.param("platform", "", PURPOSE, id="no-prepared-case"),
        pytest.param("platform", "PC-NO-SUCH-CASE", PURPOSE, id="unknown-prepared-case"),
    ],
)
def test_submit_case_is_bound_to_the_prepared_case(
    desk: Desk, submitter: str, case_id: str | None, purpose: str
) -> None:
    checklist = desk.platform.prepare_case(ITEM, COMPANY, purpose=PURPOSE)
    client = desk.kit.client(submitter)
    refused(
        lambda: client.submit_case(
            checklist.case_id if case_id is None else case_id, purpose=purpose
        ),
        Code.PERMISSION_DENIED,
        "PURPOSE_NOT_BOUND",
    )
    with desk.kit.session() as session:
        assert session.scalar(select(func.count()).select_from(CaseRow)) == 0
    # The refusal left the prepared case intact: its own platform submits it.
    receipt = desk.platform.submit_case(checklist.case_id, purpose=PURPOSE)
    assert list(receipt.departments) == [desk.kit.member_id("department")]


def test_case_numbers_are_unique_and_a_prepared_case_is_submitted_once(desk: Desk) -> None:
    checklists = [desk.platform.prepare_case(ITEM, COMPANY, purpose=PURPOSE) for _ in range(6)]
    receipts = [desk.platform.submit_case(c.case_id, purpose=PURPOSE) for c in checklists]
    numbers = [r.case_number for r in receipts]
    assert len(set(numbers)) == len(numbers)
    assert all(n and len(n) <= 40 for n in numbers)
    # Submitted again with other content: refused, naming the case it became.
    error = refused(
        lambda: desk.platform.submit_case(
            checklists[0].case_id, purpose=PURPOSE, applicant_name="另一个名称"
        ),
        Code.FAILED_PRECONDITION,
        "STATUS_TRANSITION",
    )
    assert error.metadata.get("case_id") == checklists[0].case_id
    assert error.metadata.get("case_number") == numbers[0]
    with desk.kit.session() as session:
        assert session.scalar(select(func.count()).select_from(CaseRow)) == 6
    assert count_events(desk.kit, CaseEventRow.kind == "dispatch") == 6


@pytest.mark.parametrize(
    ("own_certificate", "own_material"),
    [
        pytest.param(False, True, id="another-applicants-certificate"),
        pytest.param(True, False, id="another-applicants-material"),
    ],
)
def test_references_to_another_applicants_data_are_refused(
    desk: Desk, tmp_path: Path, own_certificate: bool, own_material: bool
) -> None:
    issuer = desk.kit.client("issuer")
    mine = certificate(desk.kit, "issuer")
    theirs = certificate(desk.kit, "issuer", holder_code=OTHER_COMPANY, holder_name="别家公司")
    for cert in (mine, theirs):
        issuer.publish_certificate(cert)
    my_plan = upload(desk, tmp_path, b"%PDF my plan", COMPANY)
    their_plan = upload(desk, tmp_path, b"%PDF their plan", OTHER_COMPANY)
    checklist = desk.platform.prepare_case(ITEM, COMPANY, purpose=PURPOSE)
    refused(
        lambda: desk.platform.submit_case(
            checklist.case_id,
            purpose=PURPOSE,
            certificate_identifiers=[mine.identifier if own_certificate else theirs.identifier],
            material_ids=[my_plan if own_material else their_plan],
        ),
        Code.PERMISSION_DENIED,
        "PURPOSE_NOT_BOUND",
    )
    with desk.kit.session() as session:
        assert session.scalar(select(func.count()).select_from(CaseRow)) == 0
    assert count_events(desk.kit) == 0
    # Nothing half-written: the same prepared case goes through with the applicant's own data.
    receipt = desk.platform.submit_case(
        checklist.case_id,
        purpose=PURPOSE,
        certificate_identifiers=[mine.identifier],
        material_ids=[my_plan],
    )
    assert receipt.case_number


def test_a_joint_case_is_dispatched_to_every_department_by_reference(
    any_desk: Desk, tmp_path: Path
) -> None:
    desk = any_desk
    licence = certificate(desk.kit, "issuer", number="440101000999888")
    desk.kit.client("issuer").publish_certificate(licence)
    content = b"%PDF-1.7 business plan " + uuid.uuid4().bytes * 8
    plan = upload(desk, tmp_path, content, COMPANY)
    receipt = desk.submit(
        JOINT_ITEM,
        certificate_identifiers=[licence.identifier],
        material_ids=[plan],
        form={"经营场所": "广州市荔湾区示例路1号"},
    )
    departments = [desk.kit.member_id("department"), desk.kit.member_id("department2")]
    assert sorted(receipt.departments) == sorted(departments)
    platform_id = desk.kit.member_id("platform")
    for client in (desk.department, desk.department2):
        (dispatched,) = drain(client.subscribe_cases)
        assert dispatched.case_number == receipt.case_number
        assert dispatched.stage == SUBMITTED
        assert dispatched.platform == desk.kit.member_id("platform")
        assert dispatched.applicant_code == COMPANY
        assert dispatched.item.code == JOINT_ITEM
        assert dict(dispatched.form) == {"经营场所": "广州市荔湾区示例路1号"}
        # References, not copies: the identifier and the hash travel, the data does not.
        assert [c.identifier for c in dispatched.certificates] == [licence.identifier]
        assert [m.material_id for m in dispatched.materials] == [plan]
        assert dispatched.materials[0].size == len(content)
        wire = dispatched.SerializeToString()
        assert content not in wire
        assert licence.number.encode() not in wire
        # The platform's own signed submission travels byte for byte and verifies.
        verify_signature_by(
            dispatched.submission, signer_key(desk.platform, platform_id, dispatched.submission)
        )
        submission = parse_verified(dispatched.submission, case_pb2.CaseSubmission)
        assert list(submission.certificate_identifiers) == [licence.identifier]
    with desk.kit.session() as session:
        rows = session.scalars(
            select(CaseDepartmentRow).where(CaseDepartmentRow.case_number == receipt.case_number)
        ).all()
        assert sorted(r.department for r in rows) == sorted(departments)
        assert {r.stage for r in rows} == {SUBMITTED}
