"""Storage queries for the certificate library; every write is validated first."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Protocol

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from xhub.certificates_store.model import (
    STATUS_NAMES,
    STATUS_RULES,
    VALID,
    Status,
    base_identifier,
    effective_status,
    parse_certificate,
    validate_certificate,
)
from xhub.certificates_store.schema import CERTIFICATES, CertificateRow
from xhub.protocol.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    MalformedError,
    NotFoundError,
    PermissionDeniedError,
    shown,
)
from xhub.v1 import certificate_pb2, envelope_pb2

R = envelope_pb2


@dataclass(frozen=True)
class Published:
    identifier: str
    already_published: bool


def publish(
    session: Session,
    *,
    envelope: envelope_pb2.Envelope,
    issuer_member_id: str,
    status: Status = VALID,
    raw_status_code: str = "",
    now: datetime | None = None,
) -> Published:
    """Store a verified, issuer-signed certificate version (the caller checked the signature)."""
    now = now or datetime.now(UTC)
    cert = parse_certificate(envelope.payload)
    validate_certificate(cert)
    existing = session.get(CertificateRow, cert.identifier)
    if existing is not None:
        _check_publisher(existing, issuer_member_id)
        stored = envelope_pb2.Envelope()
        stored.ParseFromString(existing.envelope)
        if stored.payload == envelope.payload:
            return Published(cert.identifier, already_published=True)
        raise AlreadyExistsError(
            f"{cert.identifier} is stored with other content; publish a new version",
            metadata={"identifier": cert.identifier},
        )
    base = base_identifier(cert.identifier)
    latest = session.scalars(
        select(CertificateRow).where(
            CertificateRow.base_identifier == base, CertificateRow.is_latest == 1
        )
    ).first()
    if latest is not None:
        _check_publisher(latest, issuer_member_id)
    if latest is not None and latest.version >= cert.version:
        raise FailedPreconditionError(
            f"version {cert.version} is not newer than the stored version {latest.version}",
            reason=R.ERROR_REASON_VERSION_CONFLICT,
            metadata={"identifier": cert.identifier, "stored_version": str(latest.version)},
        )
    if latest is not None:
        latest.is_latest = 0
        latest.updated_at = now
    session.add(
        CertificateRow(
            identifier=cert.identifier,
            base_identifier=base,
            type_code=cert.type_code,
            type_name=cert.type_name,
            number=cert.number,
            version=cert.version,
            issuer_code=cert.issuer_code,
            issuer_name=cert.issuer_name,
            issuer_member_id=issuer_member_id,
            holder_code=cert.holder_code,
            holder_code_type=int(cert.holder_code_type),
            valid_from=cert.valid_from,
            valid_until=cert.valid_until,
            status=int(status or VALID),
            raw_status_code=raw_status_code[:32],
            status_reason="",
            is_latest=1,
            predecessor=cert.predecessor or (latest.identifier if latest else ""),
            file_sha256=cert.file_sha256 or None,
            envelope=envelope.SerializeToString(),
            published_at=now,
            updated_at=now,
        )
    )
    session.flush()
    return Published(cert.identifier, already_published=False)


def _check_publisher(row: CertificateRow, member_id: str) -> None:
    """Only the member that published a certificate publishes its next versions and changes
    its status — not another member of the same organisation (same USCC, another subsystem).
    (No delegation yet: a certificate's publisher is fixed when its first version is stored.)"""
    if row.issuer_member_id != member_id:
        raise PermissionDeniedError(
            f"{row.identifier} was published by another member; only it may publish a new "
            "version or change its status",
            reason=R.ERROR_REASON_NOT_ISSUER,
            metadata={"identifier": row.identifier, "publisher": row.issuer_member_id},
        )


def change_status(
    session: Session,
    *,
    identifier: str,
    issuer_member_id: str,
    status: Status,
    reason: str,
    raw_status_code: str = "",
    now: datetime | None = None,
) -> tuple[Status, Status]:
    """Apply a status change by the issuer; returns (previous, new)."""
    row = session.get(CertificateRow, identifier)
    if row is None:
        raise NotFoundError(
            f"no certificate {shown(identifier)!r}", metadata={"identifier": shown(identifier)}
        )
    _check_publisher(row, issuer_member_id)
    rule = STATUS_RULES.get(status)
    if rule is None:
        raise MalformedError("status must be a concrete status", metadata={"field": "status"})
    if rule.needs_reason and not reason.strip():
        raise MalformedError(
            f"changing to {STATUS_NAMES[status]} needs a reason", metadata={"field": "reason"}
        )
    previous: Status = row.status  # type: ignore[assignment]
    if previous not in rule.allowed_from:
        raise FailedPreconditionError(
            f"certificate is {STATUS_NAMES.get(previous, previous)}; "
            f"it cannot become {STATUS_NAMES[status]}",
            metadata={"current_status": certificate_pb2.CertificateStatus.Name(previous)},
        )
    row.status = int(status)
    row.status_reason = reason.strip()
    row.raw_status_code = raw_status_code[:32]
    row.updated_at = now or datetime.now(UTC)
    return previous, status


class CertificateView(Protocol):
    """What references and status checks read: a stored row or a ``HeldCertificate``."""

    @property
    def identifier(self) -> str: ...
    @property
    def type_code(self) -> str: ...
    @property
    def type_name(self) -> str: ...
    @property
    def issuer_name(self) -> str: ...
    @property
    def issuer_member_id(self) -> str: ...
    @property
    def valid_from(self) -> str: ...
    @property
    def valid_until(self) -> str: ...
    @property
    def status(self) -> int: ...


@dataclass(frozen=True)
class HeldCertificate:
    """The columns a checklist or a pull needs, read without ORM loading (hot path)."""

    identifier: str
    type_code: str
    type_name: str
    issuer_name: str
    issuer_member_id: str
    valid_from: str
    valid_until: str
    status: int
    raw_status_code: str
    envelope: bytes


_certificates = CERTIFICATES
# Built once: every pull and checklist line runs it.
_LATEST_FOR_HOLDER = (
    select(*(_certificates.c[name] for name in HeldCertificate.__dataclass_fields__))
    .where(
        _certificates.c.holder_code == bindparam("holder_code"),
        _certificates.c.type_code.in_(bindparam("type_codes", expanding=True)),
        _certificates.c.is_latest == 1,
    )
    .order_by(_certificates.c.valid_from.desc())
)


def latest_for_holder(
    session: Session, holder_code: str, type_codes: Sequence[str]
) -> list[HeldCertificate]:
    """Latest version of each of the holder's certificates of these types (index-backed)."""
    if not type_codes:
        return []
    result = session.execute(
        _LATEST_FOR_HOLDER, {"holder_code": holder_code, "type_codes": list(type_codes)}
    )
    return [HeldCertificate(*row) for row in result]


def find(
    session: Session, *, identifier: str = "", number: str = "", type_code: str = ""
) -> CertificateRow:
    if identifier:
        row = session.get(CertificateRow, identifier)
    elif number and type_code:
        row = session.scalars(
            select(CertificateRow)
            .where(CertificateRow.number == number, CertificateRow.type_code == type_code)
            .order_by(CertificateRow.version.desc())
        ).first()
    else:
        raise MalformedError(
            "give an identifier, or a number and a type code", metadata={"field": "identifier"}
        )
    if row is None:
        raise NotFoundError("no such certificate")
    return row


def status_of(row: CertificateView, today: date | None = None) -> Status:
    return effective_status(row.status, row.valid_until, today or datetime.now(UTC).date())


def to_ref(row: CertificateView, today: date | None = None) -> certificate_pb2.CertificateRef:
    """A reference without the holder's personal fields."""
    return certificate_pb2.CertificateRef(
        identifier=row.identifier,
        type_code=row.type_code,
        type_name=row.type_name,
        issuer_name=row.issuer_name,
        issuer_member_id=row.issuer_member_id,
        valid_from=row.valid_from,
        valid_until=row.valid_until,
        status=status_of(row, today),
    )
