"""Publishing e-certificates over mTLS (CertificateService, DESIGN.md §6 flow 1).

Publish is idempotent by identifier + version, a conflicting re-publish and an out-of-order
version leave the stored data intact, a renewal keeps the earlier version, only the issuer
named in a certificate may publish it (denials audited), and status changes follow the rules
(reason required, revoked is final).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

import pytest
from certificates_world import (
    COMPANY,
    DENIED,
    LICENCE_TYPE,
    PUBLISH,
    Cert,
    Code,
    _extension,
    _set,
    _wrong_check,
    issued_by,
    licence,
    rows,
)
from helpers import refused
from hubkit import HubKit
from sqlalchemy import select

from xhub.certificates_store.identifier import (
    make_identifier,
)
from xhub.certificates_store.model import (
    CANCELLED,
    CITIZEN_ID,
    REVOKED,
    SUSPENDED,
    VALID,
    Status,
    sign_certificate,
)
from xhub.certificates_store.schema import CertificateRow
from xhub.connectors import HubClient, XhubError
from xhub.protocol.envelope import sign_payload
from xhub.protocol.log import merkle
from xhub.protocol.signing import ECDSA_P256, KeySigner, generate_private_key
from xhub.v1 import audit_pb2, certificate_pb2, envelope_pb2

# == publishing over a running hub ============================================================


def stored_payload(kit: HubKit, identifier: str) -> bytes:
    with kit.session() as session:
        row = session.get(CertificateRow, identifier)
        assert row is not None
        return envelope_pb2.Envelope.FromString(row.envelope).payload


def publish_raw(
    client: HubClient, inner: envelope_pb2.Envelope
) -> certificate_pb2.PublicationResult:
    """Publish an inner certificate envelope exactly as given (the SDK would re-sign it)."""
    return client.transport.call(
        client.transport.certificates.PublishCertificate,
        certificate_pb2.PublishCertificateRequest,
        certificate_pb2.CertificatePublication(certificate=inner),
        certificate_pb2.PublicationResult,
        idempotent=False,
    )


def test_publish_then_identical_republish_changes_nothing(kit: HubKit) -> None:
    issuer = kit.client("issuer")
    cert = issued_by(kit)
    first = issuer.publish_certificate(cert, raw_status_code="01")
    assert (first.identifier, first.already_published) == (cert.identifier, False)
    [before] = rows(kit, cert)
    assert before.issuer_member_id == kit.member_id("issuer")
    assert (before.status, before.raw_status_code, before.is_latest) == (VALID, "01", 1)
    assert envelope_pb2.Envelope.FromString(before.envelope).payload == cert.SerializeToString()

    again = issuer.publish_certificate(cert, raw_status_code="01")
    assert (again.identifier, again.already_published) == (cert.identifier, True)
    [after] = rows(kit, cert)
    # Nothing changed: not even the stored signature (ECDSA re-signing gives new bytes).
    assert after.envelope == before.envelope
    assert (after.updated_at, after.published_at) == (before.updated_at, before.published_at)


def test_same_version_with_other_content_is_a_conflict(kit: HubKit) -> None:
    issuer, department = kit.client("issuer"), kit.client("department")
    cert = issued_by(kit)
    issuer.publish_certificate(cert)
    changed = issued_by(kit, valid_until="2030-01-09")  # same identifier + version
    assert changed.identifier == cert.identifier
    error = refused(
        lambda: issuer.publish_certificate(changed), Code.ALREADY_EXISTS, "VERSION_CONFLICT"
    )
    assert error.metadata["identifier"] == cert.identifier
    # The stored version is untouched.
    assert stored_payload(kit, cert.identifier) == cert.SerializeToString()
    checked = department.verify_certificate(identifier=cert.identifier)
    assert checked.certificate.valid_until == "2044-01-09"
    assert checked.version == 1 and checked.signature_valid


def test_new_version_becomes_latest_and_keeps_the_old(kit: HubKit) -> None:
    issuer, department = kit.client("issuer"), kit.client("department")
    v1 = issued_by(kit)
    v2 = issued_by(
        kit, version=2, issue_date="2026-03-01", valid_until="2046-01-09", predecessor=v1.identifier
    )
    issuer.publish_certificate(v1)
    result = issuer.publish_certificate(v2)
    assert (result.identifier, result.already_published) == (v2.identifier, False)
    old, new = rows(kit, v1)
    assert (old.identifier, old.version, old.is_latest) == (v1.identifier, 1, 0)
    assert (new.identifier, new.version, new.is_latest) == (v2.identifier, 2, 1)
    assert new.predecessor == v1.identifier
    assert stored_payload(kit, v1.identifier) == v1.SerializeToString()
    # Both versions verify; a lookup by number finds the newest.
    assert department.verify_certificate(identifier=v1.identifier).version == 1
    by_number = department.verify_certificate(number=v1.number, type_code=LICENCE_TYPE)
    assert (by_number.version, by_number.certificate.identifier) == (2, v2.identifier)


def test_renewal_without_predecessor_is_linked_to_the_latest(hub_kit: HubKit) -> None:
    issuer = hub_kit.client("issuer")
    v1, v2 = issued_by(hub_kit), issued_by(hub_kit, version=2)
    issuer.publish_certificate(v1)
    issuer.publish_certificate(v2)
    assert rows(hub_kit, v1)[1].predecessor == v1.identifier


@pytest.mark.parametrize(
    ("published", "late"),
    [((2,), 1), ((1, 3), 2), ((3,), 2)],
    ids=["v1-after-v2", "v2-after-v1-v3", "v2-after-v3"],
)
def test_older_version_after_a_newer_is_refused(
    hub_kit: HubKit, published: tuple[int, ...], late: int
) -> None:
    issuer = hub_kit.client("issuer")
    for version in published:
        issuer.publish_certificate(issued_by(hub_kit, version=version))
    stale = issued_by(hub_kit, version=late)
    error = refused(
        lambda: issuer.publish_certificate(stale), Code.FAILED_PRECONDITION, "VERSION_CONFLICT"
    )
    assert error.metadata["stored_version"] == str(max(published))
    stored = rows(hub_kit, stale)
    assert [r.version for r in stored] == sorted(published)
    assert [r.version for r in stored if r.is_latest] == [max(published)]


def test_older_version_refused_on_postgres_too(kit: HubKit) -> None:
    issuer = kit.client("issuer")
    issuer.publish_certificate(issued_by(kit, version=2))
    refused(
        lambda: issuer.publish_certificate(issued_by(kit, version=1)),
        Code.FAILED_PRECONDITION,
        "VERSION_CONFLICT",
    )
    assert [r.version for r in rows(kit, issued_by(kit))] == [2]


def test_publishing_for_another_issuer_is_denied_and_audited(kit: HubKit) -> None:
    department, auditor = kit.client("department"), kit.client("auditor")
    foreign = issued_by(kit, "issuer")  # names the provincial issuer, signed by the department
    error = refused(
        lambda: department.publish_certificate(foreign), Code.PERMISSION_DENIED, "NOT_ISSUER"
    )
    assert error.metadata["issuer_code"] == kit.members["issuer"].spec.uscc
    assert rows(kit, foreign) == []
    leaf = bytes.fromhex(error.metadata["audit_leaf"])
    [record] = [
        r
        for r in auditor.query_audit(method=PUBLISH, decision=DENIED)
        if merkle.leaf_hash(r.entry) == leaf
    ]
    entry = audit_pb2.AuditEntry.FromString(record.entry)
    assert (entry.sender, entry.decision, entry.reason) == (
        kit.member_id("department"),
        DENIED,
        "NOT_ISSUER",
    )
    assert entry.method == PUBLISH
    # The holder is the subject: in clear for the auditor, only keyed-hashed in the entry.
    assert record.subject == COMPANY
    key = kit.config.paths.subject_key.read_bytes()
    assert entry.subject_hmac == hmac.new(key, COMPANY.encode(), hashlib.sha256).digest()
    assert COMPANY.encode() not in record.entry
    # Its own certificate the department may publish.
    own = issued_by(kit, "department", serial="2024000002")
    assert not department.publish_certificate(own).already_published


@pytest.mark.parametrize("member", ["platform", "auditor"])
def test_publishing_needs_the_issuer_role(shared_hub_kit: HubKit, member: str) -> None:
    """Refused calls change nothing: the rows share one hub (shared_hub_kit, no publish)."""
    client = shared_hub_kit.client(member)
    spec = shared_hub_kit.members[member].spec
    cert = licence(issuer_code=spec.uscc, issuer_name=spec.name)
    error = refused(
        lambda: client.publish_certificate(cert), Code.PERMISSION_DENIED, "ROLE_REQUIRED"
    )
    assert error.metadata["required_role"] == "ROLE_ISSUER"
    assert rows(shared_hub_kit, cert) == []
    refused(
        lambda: client.change_certificate_status(cert.identifier, REVOKED, reason="x"),
        Code.PERMISSION_DENIED,
        "ROLE_REQUIRED",
    )


def _bad_check(cert: Cert) -> None:
    _wrong_check(cert)


PUBLISH_INVALID = [
    ("valid-until-before-from", _set(valid_until="2023-01-01"), "valid_until"),
    ("wrong-check-character", _bad_check, "identifier"),
    ("extension-key", _extension("kz_lower"), "extensions"),
    ("citizen-type-with-uscc", _set(holder_code_type=CITIZEN_ID), "holder_code"),
    ("version-mismatch", _set(version=3), "version"),
    ("bad-date", _set(issue_date="2024-1-10"), "issue_date"),
]


@pytest.mark.parametrize(
    ("mutate", "field"), [c[1:] for c in PUBLISH_INVALID], ids=[c[0] for c in PUBLISH_INVALID]
)
def test_invalid_certificate_is_refused_by_the_hub(
    shared_hub_kit: HubKit, mutate: Callable[[Cert], None], field: str
) -> None:
    """Refused publishes store nothing: the rows share one hub on which nobody publishes."""
    issuer = shared_hub_kit.client("issuer")
    cert = issued_by(shared_hub_kit)
    mutate(cert)  # the SDK signs whatever it is given; the hub validates
    error = refused(
        lambda: issuer.publish_certificate(cert), Code.INVALID_ARGUMENT, "INVALID_CERTIFICATE"
    )
    assert error.metadata["field"] == field
    with shared_hub_kit.session() as session:
        assert session.scalar(select(CertificateRow.identifier)) is None


def test_inner_certificate_must_carry_the_callers_signature(hub_kit: HubKit) -> None:
    issuer = hub_kit.client("issuer")
    cert = issued_by(hub_kit)
    # Signed by another registered member's key (the department's Ed25519 key).
    by_other = sign_certificate(cert, hub_kit.bundle("department").signer)
    refused(lambda: publish_raw(issuer, by_other), Code.UNAUTHENTICATED, "UNKNOWN_KEY")
    # Signed by a key nobody registered.
    by_stranger = sign_certificate(cert, KeySigner(generate_private_key(ECDSA_P256)))
    refused(lambda: publish_raw(issuer, by_stranger), Code.UNAUTHENTICATED, "UNKNOWN_KEY")
    # Signed by the issuer, then altered.
    altered = sign_certificate(cert, issuer.bundle.signer)
    altered.payload = issued_by(hub_kit, valid_until="2099-12-31").SerializeToString()
    refused(lambda: publish_raw(issuer, altered), Code.UNAUTHENTICATED, "BAD_SIGNATURE")
    # Signed by the issuer, but the bytes are no certificate: the one opener's verdict.
    garbage = sign_payload(b"\xff\xff\xff", cert.DESCRIPTOR.full_name, issuer.bundle.signer)
    refused(lambda: publish_raw(issuer, garbage), Code.INVALID_ARGUMENT, "MALFORMED_PAYLOAD")
    assert rows(hub_kit, cert) == []
    # Exactly as signed it is accepted.
    signed = sign_certificate(cert, issuer.bundle.signer)
    assert publish_raw(issuer, signed).identifier == cert.identifier
    with hub_kit.session() as session:
        row = session.get(CertificateRow, cert.identifier)
        assert row is not None and row.envelope == signed.SerializeToString()


# -- status changes ------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [SUSPENDED, REVOKED, CANCELLED])
@pytest.mark.parametrize("reason", ["", "   "])
def test_suspend_and_revoke_need_a_reason(hub_kit: HubKit, status: Status, reason: str) -> None:
    issuer = hub_kit.client("issuer")
    cert = issued_by(hub_kit)
    issuer.publish_certificate(cert)
    error = refused(
        lambda: issuer.change_certificate_status(cert.identifier, status, reason=reason),
        Code.INVALID_ARGUMENT,
        "INVALID_FIELD",
    )
    assert error.metadata["field"] == "reason"
    assert rows(hub_kit, cert)[0].status == VALID


def test_status_changes_and_revocation_is_final(kit: HubKit) -> None:
    issuer = kit.client("issuer")
    cert = issued_by(kit)
    issuer.publish_certificate(cert)
    suspended = issuer.change_certificate_status(
        cert.identifier, SUSPENDED, reason="整改期间暂停", raw_status_code="02"
    )
    assert (suspended.previous_status, suspended.status) == (VALID, SUSPENDED)
    reinstated = issuer.change_certificate_status(cert.identifier, VALID, raw_status_code="01")
    assert (reinstated.previous_status, reinstated.status) == (SUSPENDED, VALID)
    revoked = issuer.change_certificate_status(
        cert.identifier, REVOKED, reason="以欺骗手段取得许可", raw_status_code="07"
    )
    assert (revoked.identifier, revoked.previous_status, revoked.status) == (
        cert.identifier,
        VALID,
        REVOKED,
    )
    [row] = rows(kit, cert)
    assert (row.status, row.raw_status_code, row.status_reason) == (
        REVOKED,
        "07",
        "以欺骗手段取得许可",
    )
    attempts: list[tuple[Status, str]] = [(VALID, "复核"), (SUSPENDED, "暂停"), (REVOKED, "再吊销")]
    for target, reason in attempts:
        with pytest.raises(XhubError) as caught:
            issuer.change_certificate_status(cert.identifier, target, reason=reason)
        error = caught.value
        assert (error.code, error.reason_name) == (Code.FAILED_PRECONDITION, "STATUS_TRANSITION")
        assert error.metadata["current_status"] == "CERTIFICATE_STATUS_REVOKED"
        assert "revoked" in error.message
    assert rows(kit, cert)[0].status == REVOKED


def test_reinstating_a_valid_certificate_is_refused(hub_kit: HubKit) -> None:
    issuer = hub_kit.client("issuer")
    cert = issued_by(hub_kit)
    issuer.publish_certificate(cert)
    error = refused(
        lambda: issuer.change_certificate_status(cert.identifier, VALID),
        Code.FAILED_PRECONDITION,
        "STATUS_TRANSITION",
    )
    assert error.metadata["current_status"] == "CERTIFICATE_STATUS_VALID"
    refused(
        lambda: issuer.change_certificate_status(
            cert.identifier, certificate_pb2.CERTIFICATE_STATUS_UNSPECIFIED, reason="x"
        ),
        Code.INVALID_ARGUMENT,
        "INVALID_FIELD",
    )


def test_another_issuer_cannot_change_my_certificate(hub_kit: HubKit) -> None:
    issuer, department = hub_kit.client("issuer"), hub_kit.client("department")
    cert = issued_by(hub_kit)
    issuer.publish_certificate(cert)
    unknown = make_identifier(LICENCE_TYPE, cert.issuer_code, "2099000001").text
    error = refused(
        lambda: department.change_certificate_status(cert.identifier, REVOKED, reason="越权"),
        Code.PERMISSION_DENIED,
        "NOT_ISSUER",
    )
    assert error.metadata["publisher"] == hub_kit.member_id("issuer")
    refused(
        lambda: issuer.change_certificate_status(unknown, REVOKED, reason="x"),
        Code.NOT_FOUND,
        "NOT_FOUND",
    )
    [row] = rows(hub_kit, cert)
    assert (row.status, row.status_reason) == (VALID, "")
