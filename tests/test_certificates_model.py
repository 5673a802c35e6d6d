"""The e-certificate model (GB/T 36903/36904) and publishing it over a running hub.

Offline: ``new_certificate`` builds identifiers whose MOD 37,36 check character validates;
``validate_certificate`` refuses every malformed field with INVALID_CERTIFICATE and the field
in the metadata; an issuer-signed certificate opens with the issuer's key and any changed
byte fails verification; ``effective_status`` turns a VALID certificate past its end date
into EXPIRED; ``status_from_raw`` maps the ministry codes of DOMAIN.md.

Over mTLS (CertificateService, DESIGN.md §6 flow 1): publish is idempotent by identifier +
version, a conflicting re-publish and an out-of-order version leave the stored data intact,
a renewal keeps the earlier version, only the issuer named in a certificate may publish it
(denials audited), and status changes follow the rules (reason required, revoked is final).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from datetime import date
from typing import Any

import grpc
import pytest
from google.protobuf.message import DecodeError
from helpers import refused
from hubkit import HubKit
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select

from xhub.certificates_store.identifier import (
    IDENTIFIER_ROOT,
    make_identifier,
    mod37_36_check_char,
    parse_identifier,
)
from xhub.certificates_store.model import (
    CANCELLED,
    CITIZEN_ID,
    DEFAULT_RAW_STATUS,
    EXPIRED,
    REVOKED,
    SUSPENDED,
    USCC,
    VALID,
    CertificateDataError,
    Status,
    effective_status,
    new_certificate,
    open_certificate,
    sign_certificate,
    status_from_raw,
    validate_certificate,
)
from xhub.certificates_store.schema import CertificateRow
from xhub.connectors import HubClient, XhubError
from xhub.protocol.codes import make_citizen_id, make_uscc
from xhub.protocol.envelope import seal, sign_payload
from xhub.protocol.errors import AuthenticationError, MalformedError, RefusedError
from xhub.protocol.log import merkle
from xhub.protocol.signing import ECDSA_P256, ED25519, KeySigner, generate_private_key
from xhub.v1 import audit_pb2, certificate_pb2, envelope_pb2

Cert = certificate_pb2.ElectronicCertificate
Code = grpc.StatusCode
PUBLISH = "/xhub.v1.CertificateService/PublishCertificate"
DENIED = audit_pb2.AUDIT_DECISION_DENIED

# Type codes: a defining ministry's USCC + 3 digits (synthetic).
LICENCE_TYPE = make_uscc("1", "1", "100000", "MB0A0001") + "001"  # 营业执照
ID_TYPE = make_uscc("1", "1", "100000", "MB0A0002") + "111"  # 居民身份证
ISSUER_CODE = make_uscc("1", "1", "440100", "MB0A0003")
COMPANY = make_uscc("9", "1", "440103", "MA5CQ8XY")
PERSON = make_citizen_id("440103", "19800101", "123")
ALNUM = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"

ECDSA_SIGNER = KeySigner(generate_private_key(ECDSA_P256))
ED25519_SIGNER = KeySigner(generate_private_key(ED25519))


def licence(**overrides: Any) -> Cert:
    """A valid business licence (营业执照) for COMPANY; keyword arguments override fields."""
    fields: dict[str, Any] = {
        "type_code": LICENCE_TYPE,
        "type_name": "营业执照",
        "issuer_code": ISSUER_CODE,
        "issuer_name": "广州市市场监督管理局",
        "serial": "2024000001",
        "number": "440101000123456",
        "holder_name": "广州荔湾示例餐饮有限公司",
        "holder_code": COMPANY,
        "holder_code_type": USCC,
        "issue_date": "2024-01-10",
        "valid_from": "2024-01-10",
        "valid_until": "2044-01-09",
        "division_code": "440103",
        "extensions": {"KZ_LEGAL_REP": "张三", "KZ_CAPITAL": "100万元"},
    }
    fields.update(overrides)
    return new_certificate(**fields)


# -- identifiers made by new_certificate -------------------------------------------------------


@pytest.mark.parametrize(
    ("type_code", "issuer_code", "serial", "version"),
    [
        (LICENCE_TYPE, ISSUER_CODE, "2024000001", 1),
        (ID_TYPE, ISSUER_CODE, "8F14E45FCEEA167A5A36DEDD4BEA2543", 2),  # GUID without dashes
        (LICENCE_TYPE, "11440100MB0A0004X", "A1B2C3D4E5F6G7H8J9K0", 999),  # 20 alphanumerics
    ],
)
def test_new_certificate_identifier_validates(
    type_code: str, issuer_code: str, serial: str, version: int
) -> None:
    cert = licence(type_code=type_code, issuer_code=issuer_code, serial=serial, version=version)
    parsed = parse_identifier(cert.identifier)
    assert (parsed.type_code, parsed.issuer_code, parsed.serial, parsed.version) == (
        type_code,
        issuer_code,
        serial,
        version,
    )
    body = f"{type_code}{issuer_code}{serial}{version:03d}"
    check = mod37_36_check_char(body)
    assert cert.identifier == (
        f"{IDENTIFIER_ROOT}.{type_code}.{issuer_code}.{serial}.{version:03d}.{check}"
    )
    assert cert.version == version
    validate_certificate(cert)  # what new_certificate returns passes on its own


@given(serial=st.text(alphabet=ALNUM, min_size=1, max_size=40), version=st.integers(1, 999))
def test_generated_identifiers_always_validate(serial: str, version: int) -> None:
    cert = licence(serial=serial, version=version)
    assert parse_identifier(cert.identifier).check == cert.identifier[-1]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"serial": "abc"}, "serial"),  # identifiers are not case-folded
        ({"serial": ""}, "serial"),
        ({"version": 0}, "version"),
        ({"version": 1000}, "version"),
        ({"type_code": LICENCE_TYPE[:-1]}, "type_code"),
    ],
)
def test_new_certificate_refuses_bad_identifier_parts(
    overrides: dict[str, Any], field: str
) -> None:
    with pytest.raises(CertificateDataError) as caught:
        licence(**overrides)
    assert caught.value.metadata["field"] == field
    assert caught.value.reason_name == "INVALID_CERTIFICATE"


# -- validate_certificate ------------------------------------------------------------------------


def _set(**fields: Any) -> Callable[[Cert], None]:
    def mutate(cert: Cert) -> None:
        for name, value in fields.items():
            setattr(cert, name, value)

    return mutate


def _wrong_check(cert: Cert) -> None:
    wrong = "0" if cert.identifier[-1] != "0" else "1"
    cert.identifier = cert.identifier[:-1] + wrong


def _other_issuer_in_identifier(cert: Cert) -> None:
    cert.identifier = make_identifier(LICENCE_TYPE, COMPANY, "2024000001").text


def _other_type_in_identifier(cert: Cert) -> None:
    cert.identifier = make_identifier(ID_TYPE, ISSUER_CODE, "2024000001").text


def _version_2_identifier(cert: Cert) -> None:
    cert.identifier = make_identifier(LICENCE_TYPE, ISSUER_CODE, "2024000001", 2).text


def _extension(key: str) -> Callable[[Cert], None]:
    def mutate(cert: Cert) -> None:
        cert.extensions[key] = "x"

    return mutate


BAD_CITIZEN_ID = PERSON[:-1] + ("0" if PERSON[-1] != "0" else "1")

INVALID = [
    # (id, mutation, field named in the error metadata)
    ("identifier-malformed", _set(identifier="1.2.156.3005.2.ABC"), "identifier"),
    ("identifier-empty", _set(identifier=""), "identifier"),
    ("identifier-other-root", _set(identifier="1.2.156.3005.9" + "x" * 3), "identifier"),
    ("identifier-lower-case", lambda c: _set(identifier=c.identifier.lower())(c), "identifier"),
    ("identifier-wrong-check", _wrong_check, "identifier"),
    ("identifier-other-type", _other_type_in_identifier, "type_code"),
    ("identifier-other-issuer", _other_issuer_in_identifier, "issuer_code"),
    ("identifier-other-version", _version_2_identifier, "version"),
    ("version-differs", _set(version=2), "version"),
    ("type-code-differs", _set(type_code=ID_TYPE), "type_code"),
    ("issuer-code-differs", _set(issuer_code=COMPANY), "issuer_code"),
    ("citizen-type-with-uscc", _set(holder_code_type=CITIZEN_ID), "holder_code"),
    ("uscc-type-with-citizen-id", _set(holder_code=PERSON), "holder_code"),
    (
        "citizen-id-bad-checksum",
        _set(holder_code=BAD_CITIZEN_ID, holder_code_type=CITIZEN_ID),
        "holder_code",
    ),
    (
        "uscc-bad-check",
        _set(holder_code=COMPANY[:-1] + ("0" if COMPANY[-1] != "0" else "1")),
        "holder_code",
    ),
    ("uscc-lower-case", _set(holder_code=COMPANY.lower()), "holder_code"),
    ("holder-type-unspecified", _set(holder_code_type=0), "holder_code_type"),
    ("holder-name-blank", _set(holder_name="  "), "holder_name"),
    ("number-empty", _set(number=""), "number"),
    ("type-name-too-long", _set(type_name="证" * 201), "type_name"),
    ("issuer-name-empty", _set(issuer_name=""), "issuer_name"),
    ("issue-date-slashes", _set(issue_date="2024/01/10"), "issue_date"),
    ("issue-date-empty", _set(issue_date=""), "issue_date"),
    ("valid-from-not-a-day", _set(valid_from="2024-02-30"), "valid_from"),
    ("valid-from-compact", _set(valid_from="20240110"), "valid_from"),
    ("valid-until-month-13", _set(valid_until="2044-13-01"), "valid_until"),
    ("valid-until-before-from", _set(valid_until="2024-01-09"), "valid_until"),
    ("issued-after-valid-from", _set(issue_date="2024-01-11"), "issue_date"),
    ("division-5-digits", _set(division_code="44010"), "division_code"),
    ("division-no-province", _set(division_code="990000"), "division_code"),
    ("predecessor-malformed", _set(predecessor="1.2.156.3005.2.X"), "predecessor"),
    ("extension-lower-case", _extension("kz_name"), "extensions"),
    ("extension-empty-key", _extension(""), "extensions"),
    ("extension-dash", _extension("KZ-NAME"), "extensions"),
    ("extension-leading-digit", _extension("1KZ"), "extensions"),
    ("extension-too-long", _extension("K" * 65), "extensions"),
    ("extension-chinese", _extension("KZ_名称"), "extensions"),
    ("file-hash-31-bytes", _set(file_sha256=b"\x00" * 31), "file_sha256"),
]


@pytest.mark.parametrize(("mutate", "field"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_validate_certificate_refuses(mutate: Callable[[Cert], None], field: str) -> None:
    cert = licence()
    mutate(cert)
    with pytest.raises(CertificateDataError) as caught:
        validate_certificate(cert)
    error = caught.value
    assert error.metadata["field"] == field, str(error)
    assert error.reason_name == "INVALID_CERTIFICATE"
    assert error.code == Code.INVALID_ARGUMENT


def test_wrong_check_character_is_reported_as_a_check_failure() -> None:
    cert = licence()
    _wrong_check(cert)
    with pytest.raises(CertificateDataError) as caught:
        validate_certificate(cert)
    assert caught.value.metadata["code"] == "IDENTIFIER_CHECK"


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"valid_until": ""},  # long-term 长期
        {"valid_until": "2024-01-10"},  # one-day validity
        {"holder_code": PERSON, "holder_code_type": CITIZEN_ID, "type_code": ID_TYPE},
        {"extensions": {}},
        {"extensions": {"KZ_A": "", "KZ_ADDRESS_2": "广州市荔湾区"}},
        {"division_code": "440103000000"},  # 12-digit platform form
        {"version": 2, "issue_date": "2025-06-01"},  # a renewal may be issued after valid_from
    ],
)
def test_valid_certificates_pass(overrides: dict[str, Any]) -> None:
    validate_certificate(licence(**overrides))


# -- issuer signatures -----------------------------------------------------------------------

extension_keys = st.from_regex(r"KZ_[A-Z0-9_]{1,12}", fullmatch=True)
names = st.text(st.characters(codec="utf-8"), min_size=1, max_size=30).filter(
    lambda s: s.strip() != ""
)
certificates = st.builds(
    licence,
    serial=st.text(alphabet=ALNUM, min_size=1, max_size=32),
    number=names,
    holder_name=names,
    extensions=st.dictionaries(extension_keys, st.text(max_size=40), max_size=5),
)
signers = st.sampled_from([ECDSA_SIGNER, ED25519_SIGNER])


@given(cert=certificates, signer=signers)
def test_sign_then_open_round_trips(cert: Cert, signer: KeySigner) -> None:
    envelope = sign_certificate(cert, signer)
    assert envelope.payload_type == "xhub.v1.ElectronicCertificate"
    assert open_certificate(envelope, signer.verifier()) == cert
    # Offline from the bytes alone: a serialized copy opens the same way.
    copy = envelope_pb2.Envelope.FromString(envelope.SerializeToString())
    assert open_certificate(copy, signer.verifier()) == cert


@given(cert=certificates, signer=signers, data=st.data())
def test_any_changed_payload_byte_fails_verification(
    cert: Cert, signer: KeySigner, data: st.DataObject
) -> None:
    envelope = sign_certificate(cert, signer)
    index = data.draw(st.integers(0, len(envelope.payload) - 1), label="index")
    mask = data.draw(st.integers(1, 255), label="mask")
    payload = bytearray(envelope.payload)
    payload[index] ^= mask
    envelope.payload = bytes(payload)
    with pytest.raises(AuthenticationError) as caught:
        open_certificate(envelope, signer.verifier())
    assert caught.value.reason_name == "BAD_SIGNATURE"


@given(cert=certificates, signer=signers, data=st.data())
def test_any_changed_envelope_byte_fails_verification(
    cert: Cert, signer: KeySigner, data: st.DataObject
) -> None:
    """A byte flipped anywhere in the stored copy (payload, type, key id, signature)."""
    blob = bytearray(sign_certificate(cert, signer).SerializeToString())
    # ECDSA signatures vary in length: draw a position independent of it.
    index = data.draw(st.integers(0, 2**16), label="position") % len(blob)
    blob[index] ^= data.draw(st.integers(1, 255), label="mask")
    try:
        tampered = envelope_pb2.Envelope.FromString(bytes(blob))
    except DecodeError:
        return  # not even an envelope any more
    with pytest.raises((AuthenticationError, MalformedError)):
        open_certificate(tampered, signer.verifier())


@pytest.mark.parametrize("signer", [ECDSA_SIGNER, ED25519_SIGNER], ids=["p256", "ed25519"])
def test_open_with_another_key_or_type_fails(signer: KeySigner) -> None:
    cert = licence()
    other = ED25519_SIGNER if signer is ECDSA_SIGNER else ECDSA_SIGNER
    with pytest.raises(AuthenticationError) as caught:
        open_certificate(sign_certificate(cert, signer), other.verifier())
    assert caught.value.reason_name == "UNKNOWN_KEY"
    # The signature of a different payload type over the same bytes is refused before crypto.
    wrong_type = seal(certificate_pb2.CertificateRef(identifier=cert.identifier), signer)
    with pytest.raises(MalformedError) as caught_type:
        open_certificate(wrong_type, signer.verifier())
    assert caught_type.value.reason_name == "WRONG_PAYLOAD_TYPE"


# -- status ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "valid_until", "today", "expected"),
    [
        (VALID, "2024-12-31", date(2025, 1, 1), EXPIRED),
        (VALID, "2020-01-01", date(2025, 1, 1), EXPIRED),
        (VALID, "2025-01-01", date(2025, 1, 1), VALID),  # the last day is still valid
        (VALID, "2030-01-01", date(2025, 1, 1), VALID),
        (VALID, "", date(2099, 1, 1), VALID),  # long-term never expires
        (SUSPENDED, "2020-01-01", date(2025, 1, 1), SUSPENDED),
        (REVOKED, "2020-01-01", date(2025, 1, 1), REVOKED),
        (CANCELLED, "2030-01-01", date(2025, 1, 1), CANCELLED),
        (EXPIRED, "2030-01-01", date(2025, 1, 1), EXPIRED),  # the source says so
    ],
)
def test_effective_status(status: int, valid_until: str, today: date, expected: int) -> None:
    assert effective_status(status, valid_until, today) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("01", VALID),
        ("02", SUSPENDED),
        ("03", REVOKED),  # withdrawn 撤回
        ("04", CANCELLED),
        ("05", EXPIRED),  # lapsed 失效
        ("06", CANCELLED),  # transferred out 迁出
        ("07", REVOKED),
    ],
)
def test_status_from_raw_ministry_codes(raw: str, expected: int) -> None:
    assert status_from_raw(raw) == expected
    assert DEFAULT_RAW_STATUS[raw] == expected


@pytest.mark.parametrize("raw", ["99", "08", "", "1", "1 ", "valid"])
def test_status_from_raw_unknown_code(raw: str) -> None:
    with pytest.raises(CertificateDataError) as caught:
        status_from_raw(raw)
    assert caught.value.metadata["field"] == "raw_status_code"
    assert caught.value.code == Code.INVALID_ARGUMENT


def test_model_errors_are_domain_errors_not_refusals() -> None:
    """The pure model raises its own error; only the servicer turns it into a refusal."""
    with pytest.raises(CertificateDataError) as caught:
        status_from_raw("99")
    assert not isinstance(caught.value, RefusedError)
    assert isinstance(caught.value, XhubError)
    assert not caught.value.retryable


def test_status_from_raw_department_mapping() -> None:
    mapping = {"A": VALID, "Z": REVOKED}
    assert status_from_raw("Z", mapping) == REVOKED
    with pytest.raises(CertificateDataError):
        status_from_raw("01", mapping)  # the default table does not leak into a custom one


# == publishing over a running hub ============================================================


@pytest.fixture(
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
    ids=["sqlite", "postgres"],
)
def kit(request: pytest.FixtureRequest) -> HubKit:
    """The running hub, once on SQLite and once on PostgreSQL."""
    name = "hub_kit" if request.param == "sqlite" else "hub_kit_pg"
    fixture: HubKit = request.getfixturevalue(name)
    return fixture


def issued_by(kit: HubKit, member: str = "issuer", **overrides: Any) -> Cert:
    """A licence naming ``member`` (its USCC and name) as issuer."""
    spec = kit.members[member].spec
    return licence(issuer_code=spec.uscc, issuer_name=spec.name, **overrides)


def rows(kit: HubKit, cert: Cert) -> list[CertificateRow]:
    """Every stored version of ``cert`` (same type, issuer, serial), oldest first."""
    parsed = parse_identifier(cert.identifier)
    base = f"{parsed.type_code}.{parsed.issuer_code}.{parsed.serial}"
    with kit.session() as session:
        found = list(
            session.scalars(
                select(CertificateRow)
                .where(CertificateRow.base_identifier == base)
                .order_by(CertificateRow.version)
            )
        )
        session.expunge_all()
    return found


def stored_payload(kit: HubKit, identifier: str) -> bytes:
    with kit.session() as session:
        row = session.get(CertificateRow, identifier)
        assert row is not None
        return envelope_pb2.Envelope.FromString(row.envelope).payload


def publish_raw(
    client: HubClient, inner: envelope_pb2.Envelope
) -> certificate_pb2.PublicationResult:
    """Publish an inner certificate envelope exactly as given (the SDK would re-sign it)."""
    return client.call(
        client.certificates.PublishCertificate,
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
def test_publishing_needs_the_issuer_role(hub_kit: HubKit, member: str) -> None:
    client = hub_kit.client(member)
    spec = hub_kit.members[member].spec
    cert = licence(issuer_code=spec.uscc, issuer_name=spec.name)
    error = refused(
        lambda: client.publish_certificate(cert), Code.PERMISSION_DENIED, "ROLE_REQUIRED"
    )
    assert error.metadata["required_role"] == "ROLE_ISSUER"
    assert rows(hub_kit, cert) == []
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
    hub_kit: HubKit, mutate: Callable[[Cert], None], field: str
) -> None:
    issuer = hub_kit.client("issuer")
    cert = issued_by(hub_kit)
    mutate(cert)  # the SDK signs whatever it is given; the hub validates
    error = refused(
        lambda: issuer.publish_certificate(cert), Code.INVALID_ARGUMENT, "INVALID_CERTIFICATE"
    )
    assert error.metadata["field"] == field
    with hub_kit.session() as session:
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
    refused(
        lambda: department.change_certificate_status(cert.identifier, REVOKED, reason="越权"),
        Code.NOT_FOUND,
        "NOT_FOUND",
    )
    refused(
        lambda: issuer.change_certificate_status(unknown, REVOKED, reason="x"),
        Code.NOT_FOUND,
        "NOT_FOUND",
    )
    [row] = rows(hub_kit, cert)
    assert (row.status, row.status_reason) == (VALID, "")
