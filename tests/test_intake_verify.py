"""VerifyCertificate over a running hub: open to every member, it reports status and whether
the issuer's signature still holds, and carries no personal field."""

from __future__ import annotations

import pytest
from helpers import refused
from intake_world import (
    COMPANY,
    COMPANY_NAME,
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
from xhub.v1 import envelope_pb2, intake_pb2

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


@pytest.mark.parametrize("member", ["department", "auditor", "platform", "issuer"])
@pytest.mark.parametrize("by", ["identifier", "number"])
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
    ],
    ids=[
        "unknown-identifier",
        "unknown-number",
        "number-of-other-type",
        "nothing",
        "number-only",
        "type-only",
    ],
)
def test_verify_refusals(
    shared_world: World, check: dict[str, str], code: Code, reason: str
) -> None:
    world = shared_world  # only reads
    refused(lambda: world.department.verify_certificate(**check), code, reason)
