"""The e-certificate model (GB/T 36903/36904), offline.

``new_certificate`` builds identifiers whose MOD 37,36 check character validates;
``validate_certificate`` refuses every malformed field with INVALID_CERTIFICATE and the field
in the metadata; an issuer-signed certificate opens with the issuer's key and any changed
byte fails verification; ``effective_status`` turns a VALID certificate past its end date
into EXPIRED; ``status_from_raw`` maps the ministry codes of DOMAIN.md.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Any

import pytest
from certificates_world import (
    ALNUM,
    COMPANY,
    ECDSA_SIGNER,
    ED25519_SIGNER,
    ID_TYPE,
    ISSUER_CODE,
    LICENCE_TYPE,
    PERSON,
    Cert,
    Code,
    _extension,
    _other_issuer_in_identifier,
    _other_type_in_identifier,
    _set,
    _version_2_identifier,
    _wrong_check,
    licence,
)
from google.protobuf.message import DecodeError
from hypothesis import given
from hypothesis import strategies as st

from xhub.certificates_store.identifier import (
    IDENTIFIER_ROOT,
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
    VALID,
    CertificateDataError,
    effective_status,
    open_certificate,
    sign_certificate,
    status_from_raw,
    validate_certificate,
)
from xhub.connectors import XhubError
from xhub.protocol.envelope import seal
from xhub.protocol.errors import AuthenticationError, MalformedError, RefusedError
from xhub.protocol.signing import KeySigner
from xhub.v1 import certificate_pb2, envelope_pb2

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
