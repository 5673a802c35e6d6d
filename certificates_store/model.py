"""The e-certificate model (电子证照): validation, issuer signatures, status.

A certificate travels as an Envelope signed by its issuer over the exact
serialized ``ElectronicCertificate`` bytes. The hub stores those bytes
unchanged, so a pulled copy verifies offline with the issuer's certificate.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import TypeAlias

import grpc
from google.protobuf.message import DecodeError

from xhub.certificates_store.identifier import IdentifierError, make_identifier, parse_identifier
from xhub.protocol import codes
from xhub.protocol.envelope import open_signed, seal
from xhub.protocol.errors import XhubError, reason_name, shown
from xhub.protocol.signing import Signer, Verifier
from xhub.v1 import certificate_pb2, envelope_pb2

Status: TypeAlias = certificate_pb2.CertificateStatus.ValueType
VALID = certificate_pb2.CERTIFICATE_STATUS_VALID
SUSPENDED = certificate_pb2.CERTIFICATE_STATUS_SUSPENDED
REVOKED = certificate_pb2.CERTIFICATE_STATUS_REVOKED
CANCELLED = certificate_pb2.CERTIFICATE_STATUS_CANCELLED
EXPIRED = certificate_pb2.CERTIFICATE_STATUS_EXPIRED
CITIZEN_ID = certificate_pb2.HOLDER_CODE_TYPE_CITIZEN_ID
USCC = certificate_pb2.HOLDER_CODE_TYPE_USCC
HOLDER_TYPE_CODES = {"111": CITIZEN_ID, "001": USCC}

# One ministry's published codes (DOMAIN.md); a department maps its own in its config.
DEFAULT_RAW_STATUS: Mapping[str, Status] = {
    "01": VALID,
    "02": SUSPENDED,
    "03": REVOKED,  # withdrawn 撤回
    "04": CANCELLED,
    "05": EXPIRED,  # lapsed 失效
    "06": CANCELLED,  # transferred out 迁出
    "07": REVOKED,
}
STATUS_NAMES = {
    VALID: "valid 有效",
    SUSPENDED: "suspended 暂停",
    REVOKED: "revoked 吊销",
    CANCELLED: "cancelled 注销",
    EXPIRED: "expired 过期",
}
DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
EXTENSION_KEY_RE = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")


class CertificateDataError(XhubError):
    """A certificate field fails validation; metadata names the field.

    A domain error, not a hub refusal: the servicer that meets it maps it to a refusal
    (hub/certificates/service.py). It reads like one (``code``, ``reason_name``,
    ``message``, ``metadata``) so an importer's report treats both alike.
    """

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = envelope_pb2.ERROR_REASON_INVALID_CERTIFICATE

    def __init__(self, message: str, *, metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.metadata: dict[str, str] = dict(metadata or {})

    @property
    def reason_name(self) -> str:
        return reason_name(self.reason)

    def __str__(self) -> str:
        return f"{self.code.name} {self.reason_name}: {self.message}"


def _fail(field: str, message: str) -> CertificateDataError:
    return CertificateDataError(f"{field}: {message}", metadata={"field": field})


def _parse_date(field: str, value: str) -> date:
    if not DATE_RE.match(value):
        raise _fail(field, f"{shown(value)!r} is not a YYYY-MM-DD date")
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise _fail(field, f"{shown(value)!r} is not a calendar date") from exc


def validate_holder(code: str, code_type: int) -> str:
    """Check the holder code against its declared type; returns the normalised code."""
    try:
        if code_type == CITIZEN_ID:
            return codes.validate_citizen_id(code, field="holder_code").code
        if code_type == USCC:
            return codes.validate_uscc(code, field="holder_code").code
    except codes.CodeError as exc:
        raise CertificateDataError(
            f"holder_code: {exc}", metadata={"field": "holder_code", "code": exc.reason}
        ) from exc
    raise _fail("holder_code_type", "must be 111 (citizen ID) or 001 (USCC)")


def validate_certificate(cert: certificate_pb2.ElectronicCertificate) -> None:
    """Every rule a stored certificate must meet (GB/T 36903/36904)."""
    try:
        identifier = parse_identifier(cert.identifier)
    except IdentifierError as exc:
        raise CertificateDataError(
            f"identifier: {exc}", metadata={"field": "identifier", "code": exc.reason}
        ) from exc
    if identifier.type_code != cert.type_code:
        raise _fail("type_code", "differs from the type code inside the identifier")
    if identifier.issuer_code != cert.issuer_code:
        raise _fail("issuer_code", "differs from the issuer code inside the identifier")
    if identifier.version != cert.version:
        raise _fail("version", "differs from the version inside the identifier")
    for field in ("type_name", "number", "issuer_name", "holder_name"):
        value = getattr(cert, field)
        if not value.strip() or len(value) > 200:
            raise _fail(field, "must be 1–200 characters")
    if cert.holder_code != validate_holder(cert.holder_code, cert.holder_code_type):
        raise _fail("holder_code", "must be written in its normalised form (upper case)")
    issued = _parse_date("issue_date", cert.issue_date)
    start = _parse_date("valid_from", cert.valid_from)
    if cert.valid_until and _parse_date("valid_until", cert.valid_until) < start:
        raise _fail("valid_until", "is before valid_from")
    if issued > start and cert.version == 1:
        raise _fail("issue_date", "is after valid_from")
    if cert.division_code:
        try:
            codes.normalize_division(cert.division_code)
        except codes.CodeError as exc:
            raise _fail("division_code", str(exc)) from exc
    if cert.predecessor:
        try:
            parse_identifier(cert.predecessor)
        except IdentifierError as exc:
            raise _fail("predecessor", str(exc)) from exc
    for key in cert.extensions:
        if not EXTENSION_KEY_RE.match(key):
            raise _fail("extensions", f"key {key[:64]!r} must look like KZ_NAME")
    if cert.file_sha256 and len(cert.file_sha256) != 32:
        raise _fail("file_sha256", "must be 32 bytes")


def new_certificate(
    *,
    type_code: str,
    type_name: str,
    issuer_code: str,
    issuer_name: str,
    serial: str,
    number: str,
    holder_name: str,
    holder_code: str,
    holder_code_type: int,
    issue_date: str,
    valid_from: str,
    valid_until: str = "",
    version: int = 1,
    predecessor: str = "",
    division_code: str = "",
    extensions: Mapping[str, str] | None = None,
) -> certificate_pb2.ElectronicCertificate:
    """A validated certificate with a generated GB/T 36904 identifier."""
    try:
        identifier = make_identifier(type_code, issuer_code, serial, version)
    except IdentifierError as exc:
        raise CertificateDataError(
            f"identifier: {exc}", metadata={"field": exc.field or "identifier"}
        ) from exc
    cert = certificate_pb2.ElectronicCertificate(
        identifier=identifier.text,
        type_code=type_code,
        type_name=type_name,
        number=number,
        version=version,
        issuer_name=issuer_name,
        issuer_code=issuer_code,
        issue_date=issue_date,
        valid_from=valid_from,
        valid_until=valid_until,
        holder_name=holder_name,
        holder_code=holder_code,
        holder_code_type=holder_code_type,  # type: ignore[arg-type]
        division_code=division_code,
        predecessor=predecessor,
        extensions=dict(extensions or {}),
    )
    validate_certificate(cert)
    return cert


def sign_certificate(
    cert: certificate_pb2.ElectronicCertificate, issuer: Signer
) -> envelope_pb2.Envelope:
    """The issuer's signature over the certificate's exact bytes (发证机构签名)."""
    return seal(cert, issuer)


def open_certificate(
    envelope: envelope_pb2.Envelope, issuer: Verifier
) -> certificate_pb2.ElectronicCertificate:
    """Verify the issuer's signature over the exact bytes, then parse (works offline).

    Raises MalformedError or AuthenticationError, as ``open_signed`` does.
    """
    return open_signed(envelope, certificate_pb2.ElectronicCertificate, lambda _: issuer).message


def parse_certificate(payload: bytes) -> certificate_pb2.ElectronicCertificate:
    cert = certificate_pb2.ElectronicCertificate()
    try:
        cert.ParseFromString(payload)
    except DecodeError as exc:
        raise _fail("certificate", "payload is not an ElectronicCertificate") from exc
    return cert


def base_identifier(identifier: str) -> str:
    """The identifier without version and check: stable across renewals."""
    parsed = parse_identifier(identifier)
    return f"{parsed.type_code}.{parsed.issuer_code}.{parsed.serial}"


def effective_status(status: int, valid_until: str, today: date) -> Status:
    """A VALID certificate past its end date is EXPIRED, whatever the source says."""
    if status == VALID and valid_until and date.fromisoformat(valid_until) < today:
        return EXPIRED
    return status  # type: ignore[return-value]


def status_from_raw(raw: str, mapping: Mapping[str, Status] = DEFAULT_RAW_STATUS) -> Status:
    try:
        return mapping[raw]
    except KeyError as exc:
        raise _fail("raw_status_code", f"no status mapping for source code {shown(raw)!r}") from exc


@dataclass(frozen=True)
class StatusRule:
    allowed_from: frozenset[int]
    needs_reason: bool


# Which status may follow which (revoked and cancelled are final).
STATUS_RULES: Mapping[int, StatusRule] = {
    VALID: StatusRule(frozenset({SUSPENDED}), needs_reason=False),
    SUSPENDED: StatusRule(frozenset({VALID}), needs_reason=True),
    REVOKED: StatusRule(frozenset({VALID, SUSPENDED}), needs_reason=True),
    CANCELLED: StatusRule(frozenset({VALID, SUSPENDED}), needs_reason=True),
    EXPIRED: StatusRule(frozenset({VALID}), needs_reason=False),
}
