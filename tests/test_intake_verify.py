"""VerifyCertificate over a running hub: by identifier open to every member, by printed number
only to platforms and departments (a number can be a person's citizen id); it reports status
and whether the issuer's signature still holds, carries no personal field, and records the
holder as the audit subject."""

from __future__ import annotations

import pytest
from helpers import refused
from intake_world import (
    ALLOWED,
    COMPANY,
    COMPANY_NAME,
    DENIED,
    ID_TYPE,
    LICENCE_TYPE,
    PERSON,
    PERSON_NAME,
    Code,
    World,
)

from xhub.certificates_store.model import (
    REVOKED,
    VALID,
)
from xhub.certificates_store.schema import CertificateRow
from xhub.connectors import HubClient
from xhub.v1 import audit_pb2, envelope_pb2, intake_pb2

# -- VerifyCertificate -----------------------------------------------------------------------


def _verify_wire(
    client: HubClient, *, identifier: str = "", number: str = "", type_code: str = ""
) -> bytes:
    """The exact bytes of a VerifyCertificate response, as they crossed the wire."""
    check = intake_pb2.CertificateCheck(identifier=identifier, number=number, type_code=type_code)
    envelope = client.transport.seal(check)
    response = client.transport.intake.VerifyCertificate(
        intake_pb2.VerifyCertificateRequest(envelope=envelope), timeout=10
    )
    return bytes(response.SerializeToString())


@pytest.mark.parametrize(
    ("member", "by"),
    [
        *((member, "identifier") for member in ("department", "auditor", "platform", "issuer")),
        *((member, "number") for member in ("department", "platform")),
    ],
)
def test_verify_certificate_without_personal_fields(
    shared_world: World, member: str, by: str
) -> None:
    world = shared_world  # only reads
    client = world.kit.client(member)
    check = (
        {"identifier": world.licence.identifier}
        if by == "identifier"
        else {"number": world.licence.number, "type_code": LICENCE_TYPE}
    )
    result = client.verify_certificate(**check)
    ref = result.certificate
    assert (ref.identifier, ref.type_code, ref.type_name, ref.status) == (
        world.licence.identifier,
        LICENCE_TYPE,
        "营业执照",
        VALID,
    )
    assert (ref.issuer_member_id, ref.issuer_name) == (
        world.kit.member_id("issuer"),
        world.kit.members["issuer"].spec.name,
    )
    assert (ref.valid_from, ref.valid_until) == ("2024-01-10", "2044-01-09")
    assert (result.signature_valid, result.version, result.raw_status_code) == (True, 1, "01")
    wire = _verify_wire(client, **check)
    for personal in (COMPANY, COMPANY_NAME, PERSON_NAME, PERSON):
        assert personal.encode() not in wire, f"{personal} leaked into the verification"


@pytest.mark.parametrize("member", ["auditor", "issuer"])
def test_verify_by_number_is_refused_to_members_that_do_not_need_it(
    shared_world: World, member: str
) -> None:
    """An auditor or an issuer could otherwise probe whether a person holds a certificate."""
    world = shared_world  # only reads
    client = world.kit.client(member)
    error = refused(
        lambda: client.verify_certificate(number=PERSON, type_code=ID_TYPE),
        Code.PERMISSION_DENIED,
        "ROLE_REQUIRED",
    )
    assert PERSON not in str(error) and world.id_card.identifier not in str(error)
    # The identifier still verifies for them: it names a certificate, not a person.
    assert client.verify_certificate(identifier=world.id_card.identifier).signature_valid


def test_lookups_by_number_are_found_by_the_holders_audit_subject(world: World) -> None:
    """An auditor searching for a person finds every lookup of their certificates, found,
    not found, or refused."""
    world.department.verify_certificate(number=PERSON, type_code=ID_TYPE)
    world.platform.verify_certificate(identifier=world.id_card.identifier)
    refused(
        lambda: world.issuer.verify_certificate(number=PERSON, type_code=ID_TYPE),
        Code.PERMISSION_DENIED,
        "ROLE_REQUIRED",
    )
    refused(
        lambda: world.platform.verify_certificate(number=PERSON, type_code=LICENCE_TYPE),
        Code.NOT_FOUND,
        "NOT_FOUND",
    )
    method = "/xhub.v1.IntakeService/VerifyCertificate"
    found = [
        (audit_pb2.AuditEntry.FromString(r.entry), r.subject)
        for r in world.auditor.query_audit(subject=PERSON, method=method)
    ]
    callers = sorted((e.sender, e.decision) for e, _ in found)
    assert callers == sorted(
        [
            (world.kit.member_id("department"), ALLOWED),
            (world.kit.member_id("platform"), ALLOWED),
            (world.kit.member_id("issuer"), DENIED),
            (world.kit.member_id("platform"), DENIED),
        ]
    )
    assert {subject for _, subject in found} == {PERSON}


def test_verify_reports_status_and_ed25519_signatures(world: World) -> None:
    ident = world.department.verify_certificate(identifier=world.id_card.identifier)
    assert ident.signature_valid and ident.certificate.status == VALID
    assert PERSON.encode() not in _verify_wire(world.issuer, identifier=world.id_card.identifier)
    world.issuer.change_certificate_status(world.licence.identifier, REVOKED, reason="吊销")
    revoked = world.department.verify_certificate(identifier=world.licence.identifier)
    assert (revoked.certificate.status, revoked.signature_valid) == (REVOKED, True)


def test_verify_detects_stored_bytes_that_no_longer_verify(world: World) -> None:
    with world.kit.session() as session:
        row = session.get(CertificateRow, world.licence.identifier)
        assert row is not None
        envelope = envelope_pb2.Envelope.FromString(row.envelope)
        envelope.payload = envelope.payload.replace(b"2044-01-09", b"2099-01-09")
        row.envelope = envelope.SerializeToString()
    result = world.department.verify_certificate(identifier=world.licence.identifier)
    assert result.signature_valid is False


@pytest.mark.parametrize(
    ("check", "code", "reason"),
    [
        ({"identifier": "1.2.156.3005.2.NOPE"}, Code.NOT_FOUND, "NOT_FOUND"),
        ({"number": "NO-SUCH-NUMBER", "type_code": LICENCE_TYPE}, Code.NOT_FOUND, "NOT_FOUND"),
        ({"number": "440101000123456", "type_code": ID_TYPE}, Code.NOT_FOUND, "NOT_FOUND"),
        ({}, Code.INVALID_ARGUMENT, "INVALID_FIELD"),
        ({"number": "440101000123456"}, Code.INVALID_ARGUMENT, "INVALID_FIELD"),
        ({"type_code": LICENCE_TYPE}, Code.INVALID_ARGUMENT, "INVALID_FIELD"),
        ({"identifier": "1.2\x00"}, Code.INVALID_ARGUMENT, "INVALID_FIELD"),
        ({"number": "4401" * 17, "type_code": ID_TYPE}, Code.INVALID_ARGUMENT, "INVALID_FIELD"),
    ],
    ids=[
        "unknown-identifier",
        "unknown-number",
        "number-of-other-type",
        "nothing",
        "number-only",
        "type-only",
        "nul-in-identifier",
        "number-too-long",
    ],
)
def test_verify_refusals(
    shared_world: World, check: dict[str, str], code: Code, reason: str
) -> None:
    world = shared_world  # only reads
    refused(lambda: world.department.verify_certificate(**check), code, reason)
