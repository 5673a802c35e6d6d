"""Departments read what they review (部门调阅材料), over a running hub.

A department a case was dispatched to pulls the certificates and downloads the materials that
case references — the ones the platform's signed submission and resubmissions name, nothing
else of the applicant — while the case is open there; audited like a platform's pull (the
applicant as subject, the case number in the entry). Everyone else is refused: another
department's case NOT_YOUR_CASE, a reference the case does not carry PURPOSE_NOT_BOUND, a case
closed at the department CASE_CLOSED, a member without the role ROLE_REQUIRED. The SDK checks
what comes back against the issuers' signatures and the platform's signed references, and
names what disagreed when the hub's database was edited.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cases_world import (
    COMPANY,
    ITEM,
    ITEM2,
    NOT_ACCEPTED,
    OTHER_COMPANY,
    SUPPLEMENT,
    Desk,
    certificate,
    drain,
    event_id,
    upload,
)
from helpers import refused
from sqlalchemy import update

from xhub.certificates_store.schema import CertificateRow
from xhub.connectors import HubClient
from xhub.hub.core.db import MaterialRow
from xhub.protocol.errors import BadResponseError
from xhub.v1 import audit_pb2, case_pb2

Code = grpc.StatusCode
PULL = "/xhub.v1.IntakeService/PullCaseCertificates"
DOWNLOAD = "/xhub.v1.MaterialService/Download"


@dataclass
class Reviewed:
    """A case dispatched to ``department`` referencing one certificate and one material."""

    case_number: str
    identifier: str
    material_id: str
    content: bytes
    dispatched: case_pb2.DispatchedCase


def reviewed(desk: Desk, folder: Path, *, item: str = ITEM) -> Reviewed:
    cert = certificate(desk.kit, "issuer")
    desk.kit.client("issuer").publish_certificate(cert)
    content = b"%PDF-1.7 floor plan " + cert.identifier.encode()
    material_id = upload(desk, folder, content, COMPANY)
    receipt = desk.submit(
        item, certificate_identifiers=[cert.identifier], material_ids=[material_id]
    )
    receiver = desk.department if item == ITEM else desk.department2
    (dispatched,) = [
        c for c in drain(receiver.subscribe_cases) if c.case_number == receipt.case_number
    ]
    return Reviewed(receipt.case_number, cert.identifier, material_id, content, dispatched)


def audited(auditor: HubClient, method: str, case_number: str) -> list[audit_pb2.AuditEntry]:
    return [
        audit_pb2.AuditEntry.FromString(record.entry)
        for record in auditor.query_audit(method=method, subject=COMPANY)
        if audit_pb2.AuditEntry.FromString(record.entry).case_id == case_number
    ]


# == What a department may read ===================================================================


def test_a_department_reads_the_certificates_and_materials_its_case_references(
    any_desk: Desk, tmp_path: Path
) -> None:
    desk = any_desk
    case = reviewed(desk, tmp_path / "up")
    pulled = desk.department.pull_case_certificates(case.case_number, dispatched=case.dispatched)
    assert [p.annotation.case_id for p in pulled.certificates] == [case.case_number]
    signed = desk.department.verify_issuer_signature(pulled.certificates[0])
    assert (signed.identifier, signed.holder_code) == (case.identifier, COMPANY)
    assert pulled.certificates[0].annotation.pulled_by == desk.department.member_id

    destination = tmp_path / "plan.pdf"
    descriptor = desk.department.download_case_material(
        case.case_number, case.material_id, destination
    )
    assert destination.read_bytes() == case.content
    assert descriptor.material.material_id == case.material_id

    # Audited like a platform's pull: the applicant as subject, the case number, allowed.
    for method in (PULL, DOWNLOAD):
        (entry,) = audited(desk.auditor, method, case.case_number)
        assert entry.sender == desk.department.member_id
        assert entry.decision == audit_pb2.AUDIT_DECISION_ALLOWED


def test_references_added_by_a_resubmission_are_the_cases_too(desk: Desk, tmp_path: Path) -> None:
    case = reviewed(desk, tmp_path / "up")
    desk.walk(case.case_number, [SUPPLEMENT])
    later = upload(desk, tmp_path / "up", b"the missing lease", COMPANY)
    desk.platform.resubmit_case(case.case_number, event_id=event_id(), material_ids=[later])
    destination = tmp_path / "lease.pdf"
    desk.department.download_case_material(case.case_number, later, destination)
    assert destination.read_bytes() == b"the missing lease"


# == Refusals =====================================================================================


REFUSALS: list[tuple[str, Callable[[Desk, Reviewed, Path], object], Code, str]] = [
    (
        "another-departments-case-pull",
        lambda desk, case, _: desk.department2.pull_case_certificates(case.case_number),
        Code.PERMISSION_DENIED,
        "NOT_YOUR_CASE",
    ),
    (
        "another-departments-case-download",
        lambda desk, case, folder: desk.department2.download_case_material(
            case.case_number, case.material_id, folder / "x"
        ),
        Code.PERMISSION_DENIED,
        "NOT_YOUR_CASE",
    ),
    (
        "a-certificate-the-case-does-not-reference",
        lambda desk, case, _: desk.department.pull_case_certificates(
            case.case_number, ["1.2.156.3005.2.11100000MB0A0001001.X.1.0.1.C"]
        ),
        Code.PERMISSION_DENIED,
        "PURPOSE_NOT_BOUND",
    ),
    (
        "another-material-of-the-same-applicant",
        lambda desk, case, folder: desk.department.download_case_material(
            case.case_number, upload(desk, folder, b"not in the case", COMPANY), folder / "x"
        ),
        Code.PERMISSION_DENIED,
        "PURPOSE_NOT_BOUND",
    ),
    (
        "no-such-case",
        lambda desk, case, _: desk.department.pull_case_certificates("20990101NOSUCHCASE"),
        Code.NOT_FOUND,
        "NOT_FOUND",
    ),
    (
        "an-auditor-pulls",
        lambda desk, case, _: desk.auditor.pull_case_certificates(case.case_number),
        Code.PERMISSION_DENIED,
        "ROLE_REQUIRED",
    ),
    (
        "an-issuer-downloads",
        lambda desk, case, folder: desk.kit.client("issuer").download_case_material(
            case.case_number, case.material_id, folder / "x"
        ),
        Code.PERMISSION_DENIED,
        "ROLE_REQUIRED",
    ),
    (
        "a-platform-names-a-case-number",
        lambda desk, case, folder: desk.platform.download_case_material(
            case.case_number, case.material_id, folder / "x"
        ),
        Code.PERMISSION_DENIED,
        "PURPOSE_NOT_BOUND",
    ),
]


@pytest.mark.parametrize(
    ("attempt", "code", "reason"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS]
)
def test_refusals(
    shared_desk: Desk,
    tmp_path: Path,
    attempt: Callable[[Desk, Reviewed, Path], object],
    code: Code,
    reason: str,
) -> None:
    case = reviewed(shared_desk, tmp_path / "up")
    refused(lambda: attempt(shared_desk, case, tmp_path), code, reason)
    assert not (tmp_path / "x").exists()


def test_a_case_closed_at_the_department_is_closed_to_it(any_desk: Desk, tmp_path: Path) -> None:
    desk = any_desk
    case = reviewed(desk, tmp_path / "up")
    desk.walk(case.case_number, [NOT_ACCEPTED])
    error = refused(
        lambda: desk.department.pull_case_certificates(case.case_number),
        Code.FAILED_PRECONDITION,
        "CASE_CLOSED",
    )
    assert "NOT_ACCEPTED" in error.message
    refused(
        lambda: desk.department.download_case_material(
            case.case_number, case.material_id, tmp_path / "x"
        ),
        Code.FAILED_PRECONDITION,
        "CASE_CLOSED",
    )
    # Refusals are audited under the applicant, with the case number.
    denied = audited(desk.auditor, PULL, case.case_number)
    assert [e.decision for e in denied] == [audit_pb2.AUDIT_DECISION_DENIED]
    assert denied[0].reason == "CASE_CLOSED"


def test_each_department_of_a_joint_case_reads_it_until_closed_there(
    desk: Desk, tmp_path: Path
) -> None:
    case = reviewed(desk, tmp_path / "up", item=ITEM2)
    refused(
        lambda: desk.department.pull_case_certificates(case.case_number),
        Code.PERMISSION_DENIED,
        "NOT_YOUR_CASE",
    )
    assert desk.department2.pull_case_certificates(case.case_number).certificates


# == Tampering: the SDK names what disagreed ======================================================


def test_a_certificate_swapped_in_the_hub_database_is_refused(desk: Desk, tmp_path: Path) -> None:
    case = reviewed(desk, tmp_path / "up")
    other = certificate(desk.kit, "issuer")
    desk.kit.client("issuer").publish_certificate(other)
    with desk.kit.session() as session:
        forged = session.get(CertificateRow, other.identifier)
        assert forged is not None
        session.execute(
            update(CertificateRow)
            .where(CertificateRow.identifier == case.identifier)
            .values(envelope=forged.envelope)
        )
    with pytest.raises(BadResponseError) as raised:
        desk.department.pull_case_certificates(case.case_number, dispatched=case.dispatched)
    assert other.identifier in raised.value.message and case.identifier in raised.value.message


def test_a_download_that_differs_from_its_descriptor_leaves_no_file(
    desk: Desk, tmp_path: Path
) -> None:
    case = reviewed(desk, tmp_path / "up")
    with desk.kit.session() as session:
        session.execute(
            update(MaterialRow)
            .where(MaterialRow.material_id == case.material_id)
            .values(size=len(case.content) + 1)
        )
    destination = tmp_path / "plan.pdf"
    with pytest.raises(BadResponseError):
        desk.department.download_case_material(case.case_number, case.material_id, destination)
    assert not destination.exists() and not list(tmp_path.glob("plan.pdf*"))


def test_another_applicants_material_under_the_asked_id_is_refused(
    any_desk: Desk, tmp_path: Path
) -> None:
    """The hub moves another applicant's whole material (blob, columns, the uploader's
    manifest) under the id the case references: the uploader's signature holds, but the
    manifest is not of the case's applicant, which the platform signed."""
    desk = any_desk
    case = reviewed(desk, tmp_path / "up")
    theirs = upload(desk, tmp_path / "up", b"%PDF-1.7 another applicant's plan", OTHER_COMPANY)
    with desk.kit.session() as session:
        row = session.get(MaterialRow, theirs)
        assert row is not None
        columns = {
            c: getattr(row, c) for c in ("sha256", "size", "manifest", "name", "applicant_code")
        }
        session.execute(
            update(MaterialRow).where(MaterialRow.material_id == case.material_id).values(**columns)
        )
        session.commit()
    destination = tmp_path / "plan.pdf"
    with pytest.raises(BadResponseError, match=r"is of applicant .*not of the prepared case"):
        desk.department.download_case_material(
            case.case_number,
            case.material_id,
            destination,
            applicant_code=case.dispatched.applicant_code,
        )
    assert not destination.exists()
