"""The catalogue and PrepareCase over a running hub (DESIGN.md §6 flow 2): PrepareCase is for
platform members, needs a purpose and well-formed codes, and answers the one-time checklist
(一次性告知): which certificate satisfies each requirement and what the applicant must still
bring; expired, suspended, revoked and superseded certificates satisfy nothing and the line
says why."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from helpers import refused
from hubkit import HubKit
from intake_world import (
    COMPANY,
    COMPANY_NAME,
    ID_LINE,
    ITEM_CODE,
    LICENCE_LINE,
    LICENCE_TYPE,
    OTHER_COMPANY,
    PERSON,
    PERSON_NAME,
    PURPOSE,
    Cert,
    Code,
    World,
    certificate,
    make_world,
    prepared_cases,
)

from xhub.certificates_store.model import (
    CANCELLED,
    CITIZEN_ID,
    EXPIRED,
    REVOKED,
    SUSPENDED,
    VALID,
    Status,
)
from xhub.hub.core.db import PreparedCaseRow

# -- the catalogue ---------------------------------------------------------------------------


def test_get_item_for_any_member(shared_world: World) -> None:
    world = shared_world  # refused before anything is prepared
    item = world.department.get_item(ITEM_CODE).item
    assert item.name == "食品经营许可(新办)"
    assert [m.code for m in item.materials] == ["M01", "M02", "M03", "M04"]
    assert list(item.departments) == [world.kit.member_id("department")]
    error = refused(lambda: world.platform.get_item("NO-SUCH-ITEM"), Code.NOT_FOUND, "NOT_FOUND")
    assert error.metadata["item_code"] == "NO-SUCH-ITEM"


# -- PrepareCase -----------------------------------------------------------------------------


@pytest.mark.parametrize("member", ["issuer", "department", "auditor"])
def test_prepare_case_is_for_platform_members_only(shared_world: World, member: str) -> None:
    world = shared_world  # refused before anything is prepared
    client = world.kit.client(member)
    error = refused(
        lambda: client.prepare_case(ITEM_CODE, COMPANY, purpose=PURPOSE),
        Code.PERMISSION_DENIED,
        "ROLE_REQUIRED",
    )
    assert error.metadata["required_role"] == "ROLE_PLATFORM"
    assert prepared_cases(world.kit) == 0


@pytest.mark.parametrize("purpose", ["", "   "])
def test_prepare_case_needs_a_purpose(shared_world: World, purpose: str) -> None:
    world = shared_world  # refused before anything is prepared
    error = refused(lambda: world.prepare(purpose=purpose), Code.INVALID_ARGUMENT, "INVALID_FIELD")
    assert error.metadata["field"] == "purpose"
    assert prepared_cases(world.kit) == 0


def test_prepare_case_for_an_unknown_item(shared_world: World) -> None:
    world = shared_world  # refused before anything is prepared
    error = refused(
        lambda: world.platform.prepare_case("NO-SUCH-ITEM", COMPANY, purpose=PURPOSE),
        Code.NOT_FOUND,
        "NOT_FOUND",
    )
    assert error.metadata["item_code"] == "NO-SUCH-ITEM"
    assert prepared_cases(world.kit) == 0


BAD_USCC = COMPANY[:-1] + ("0" if COMPANY[-1] != "0" else "1")
BAD_CITIZEN_ID = PERSON[:-1] + ("0" if PERSON[-1] != "0" else "1")
MALFORMED_APPLICANTS = [
    ("uscc-bad-check", {"applicant_code": BAD_USCC}, "applicant_code"),
    ("uscc-too-short", {"applicant_code": COMPANY[:-1]}, "applicant_code"),
    ("empty", {"applicant_code": ""}, "applicant_code"),
    ("uscc-typed-as-citizen", {"applicant_code_type": CITIZEN_ID}, "applicant_code"),
    ("citizen-typed-as-uscc", {"applicant_code": PERSON}, "applicant_code"),
    (
        "citizen-bad-check",
        {"applicant_code": BAD_CITIZEN_ID, "applicant_code_type": CITIZEN_ID},
        "applicant_code",
    ),
    ("type-unspecified", {"applicant_code_type": 0}, "applicant_code"),
    (
        "legal-rep-bad-check",
        {"legal_representative_code": BAD_CITIZEN_ID},
        "legal_representative_code",
    ),
    (
        "legal-rep-is-uscc",
        {"legal_representative_code": OTHER_COMPANY},
        "legal_representative_code",
    ),
]


@pytest.mark.parametrize(
    ("fields", "field"),
    [c[1:] for c in MALFORMED_APPLICANTS],
    ids=[c[0] for c in MALFORMED_APPLICANTS],
)
def test_prepare_case_refuses_malformed_codes(
    shared_world: World, fields: dict[str, Any], field: str
) -> None:
    world = shared_world  # refused before anything is prepared
    fields = dict(fields)
    applicant = fields.pop("applicant_code", COMPANY)
    kwargs: dict[str, Any] = {"purpose": PURPOSE, "legal_representative_code": PERSON}
    kwargs.update(fields)
    error = refused(
        lambda: world.platform.prepare_case(ITEM_CODE, applicant, **kwargs),
        Code.INVALID_ARGUMENT,
        "INVALID_FIELD",
    )
    assert error.metadata["field"] == field
    assert prepared_cases(world.kit) == 0


def test_checklist_names_the_certificates_and_what_to_bring(intake_kit: HubKit) -> None:
    kit = intake_kit
    world = make_world(kit)
    checklist = world.prepare()
    assert checklist.case_id
    assert checklist.item.code == ITEM_CODE
    assert [line.material.code for line in checklist.lines] == ["M01", "M02", "M03", "M04"]
    licence, id_card, premises, rules = checklist.lines

    # The business licence: held, by the provincial issuer, with its validity.
    assert licence.satisfied
    ref = licence.certificate
    assert (ref.identifier, ref.type_code, ref.type_name) == (
        world.licence.identifier,
        LICENCE_TYPE,
        "营业执照",
    )
    assert (ref.issuer_member_id, ref.issuer_name) == (
        kit.member_id("issuer"),
        kit.members["issuer"].spec.name,
    )
    assert (ref.valid_from, ref.valid_until, ref.status) == ("2024-01-10", "2044-01-09", VALID)
    # The legal representative's ID card, issued by the district department (Ed25519 key).
    assert id_card.satisfied
    assert id_card.certificate.identifier == world.id_card.identifier
    assert id_card.certificate.issuer_member_id == kit.member_id("department")
    # Proof of premises: could be a certificate, none on record -> bring it.
    assert not premises.satisfied and not premises.HasField("certificate")
    assert "must bring" in premises.note
    # Food-safety rules: material only -> the applicant brings it.
    assert not rules.satisfied and not rules.HasField("certificate")
    assert "material" in rules.note and "brings" in rules.note
    # The checklist carries no holder's personal field.
    wire = checklist.SerializeToString()
    assert COMPANY_NAME.encode() not in wire and PERSON_NAME.encode() not in wire

    # The prepared case binds later pulls.
    with kit.session() as session:
        case = session.get(PreparedCaseRow, checklist.case_id)
        assert case is not None
        assert (case.platform_member_id, case.item_code, case.purpose) == (
            kit.member_id("platform"),
            ITEM_CODE,
            PURPOSE,
        )
        assert (case.applicant_code, case.legal_representative_code) == (COMPANY, PERSON)
        assert case.expires_at > datetime.now(UTC)


def test_checklist_without_legal_representative(world: World) -> None:
    checklist = world.prepare(legal_representative_code="")
    line = checklist.lines[ID_LINE]
    assert not line.satisfied and not line.HasField("certificate")
    assert "legal representative" in line.note
    assert checklist.lines[LICENCE_LINE].satisfied


def test_checklist_normalises_the_applicant_code(world: World) -> None:
    checklist = world.platform.prepare_case(ITEM_CODE, COMPANY.lower(), purpose=PURPOSE)
    assert checklist.lines[LICENCE_LINE].satisfied


def _expired(world: World) -> Cert:
    cert = certificate(
        world.kit,
        "issuer",
        serial="2010000001",
        issue_date="2010-03-01",
        valid_from="2010-03-01",
        valid_until="2020-02-29",
    )
    world.issuer.publish_certificate(cert)
    return cert


def _changed(status: Status, reason: str) -> Callable[[World], Cert]:
    def make(world: World) -> Cert:
        world.issuer.publish_certificate(world.licence)
        world.issuer.change_certificate_status(world.licence.identifier, status, reason=reason)
        return world.licence

    return make


def _published_revoked(world: World) -> Cert:
    cert = certificate(world.kit, "issuer", serial="2024000002")
    world.issuer.publish_certificate(cert, status=REVOKED, raw_status_code="07")
    return cert


UNUSABLE = [
    # (id, what to publish on a hub with no valid licence, its status, the word in the note)
    ("expired", _expired, EXPIRED, "expired"),
    ("suspended", _changed(SUSPENDED, "责令停业整顿"), SUSPENDED, "suspended"),
    ("revoked", _changed(REVOKED, "吊销营业执照"), REVOKED, "revoked"),
    ("cancelled", _changed(CANCELLED, "公司注销"), CANCELLED, "cancelled"),
    ("revoked-when-published", _published_revoked, REVOKED, "revoked"),
]


@pytest.mark.parametrize(
    ("make", "status", "word"), [c[1:] for c in UNUSABLE], ids=[c[0] for c in UNUSABLE]
)
def test_unusable_certificate_does_not_satisfy(
    hub_kit: HubKit, make: Callable[[World], Cert], status: int, word: str
) -> None:
    world = make_world(hub_kit, publish=False)
    cert = make(world)
    line = world.prepare().lines[LICENCE_LINE]
    assert not line.satisfied, f"a {word} certificate was offered as satisfying"
    assert word in line.note and "must bring" in line.note
    # If the line names the certificate on record, it shows why it cannot be used.
    if line.HasField("certificate"):
        assert (line.certificate.identifier, line.certificate.status) == (cert.identifier, status)
    # VerifyCertificate reports the same status.
    assert world.department.verify_certificate(identifier=cert.identifier).certificate.status == (
        status
    )


def test_a_valid_certificate_beside_a_revoked_one_is_offered(world: World) -> None:
    revoked = _published_revoked(world)
    _expired(world)
    line = world.prepare().lines[LICENCE_LINE]
    assert line.satisfied
    assert line.certificate.identifier == world.licence.identifier != revoked.identifier


def test_the_renewed_version_is_the_one_offered(intake_kit: HubKit) -> None:
    kit = intake_kit
    world = make_world(kit)
    v2 = certificate(
        kit,
        "issuer",
        version=2,
        issue_date="2026-01-05",
        valid_until="2046-01-04",
        predecessor=world.licence.identifier,
    )
    world.issuer.publish_certificate(v2)
    line = world.prepare().lines[LICENCE_LINE]
    assert line.satisfied
    assert (line.certificate.identifier, line.certificate.valid_until) == (
        v2.identifier,
        "2046-01-04",
    )
    # A revoked renewal is not replaced by the superseded version 1.
    world.issuer.change_certificate_status(v2.identifier, REVOKED, reason="吊销")
    line = world.prepare().lines[LICENCE_LINE]
    assert not line.satisfied and "revoked" in line.note
