"""Enrolment, re-enrolment and renewal from a member's request (接入 / 重新接入 / 续期).

The hub checks the request (``protocol.enrolment.verify_request``: both proofs of
possession, P-256 TLS key, the CSR naming the member), decides against the registry rows it
read once (``decide_enrolment`` / ``decide_renewal``, pure), then issues the certificate and
writes rows. It never generates or sees a member private key. Every refusal is a
``RegistryError`` raised before anything is written; the caller commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import select
from sqlalchemy.orm import Session

from xhub.hub.core.ca import MEMBER_DAYS, CertificateAuthority
from xhub.hub.core.db import MemberCertificateRow, MemberKeyRow, MemberRoleRow, MemberRow
from xhub.hub.registry.store import ACTIVE, MemberSpec, RegistryError
from xhub.protocol.enrolment import EnrolmentError, VerifiedRequest, verify_request
from xhub.protocol.pki import when
from xhub.protocol.signing import key_id_for, public_key_der
from xhub.v1 import envelope_pb2


@dataclass(frozen=True)
class Enrolled:
    """What ``member add --csr`` / ``renew`` produced (no private key anywhere)."""

    member_id: str
    name: str
    certificate: x509.Certificate
    signing_key_id: str
    enrolment: int
    row: MemberRow


def _refuse(message: str, field: str = "csr") -> RegistryError:
    return RegistryError(message, metadata={"field": field})


def checked_request(envelope: envelope_pb2.Envelope, expected_member_id: str) -> VerifiedRequest:
    """Both proofs of possession, and the request is for ``expected_member_id``."""
    try:
        verified = verify_request(envelope)
    except EnrolmentError as exc:
        raise _refuse(f"enrolment request refused: {exc}") from exc
    if verified.member_id != expected_member_id:
        raise _refuse(
            f"the request is for {verified.member_id}, but --division/--uscc/--subsystem "
            f"give {expected_member_id}",
            "member_id",
        )
    return verified


def decide_enrolment(
    existing: MemberRow | None,
    old_key_ids: Sequence[str],
    old_tls_key_ids: Sequence[str],
    verified: VerifiedRequest,
    *,
    re_enrol: bool,
) -> int:
    """The enrolment number the new certificate and key get, or a refusal."""
    member_id = verified.member_id
    if existing is None:
        if re_enrol:
            raise _refuse(f"{member_id} is not enrolled yet; enrol it without --re-enrol")
        return 1
    if existing.status == ACTIVE:
        raise _refuse(
            f"member {member_id} already exists and is active (certificate valid until "
            f"{when(existing.not_after)}); renew its certificate with "
            f"`xhub member renew {member_id} --csr FILE`",
            "member_id",
        )
    revoked = when(existing.revoked_at) if existing.revoked_at else "an unknown date"
    if not re_enrol:
        raise _refuse(
            f"member {member_id} exists and is revoked since {revoked} "
            f"({existing.revoke_reason}); to enrol it again under new keys, repeat with "
            "--re-enrol",
            "member_id",
        )
    if verified.signing_key.key_id in old_key_ids:
        raise _refuse("re-enrolment needs a new signing key: this one was registered before")
    if verified.tls_key_id in old_tls_key_ids:
        raise _refuse("re-enrolment needs a new TLS key: this one was certified before")
    return existing.enrolment + 1


def enrol_member(
    session: Session,
    ca: CertificateAuthority,
    spec: MemberSpec,
    request: envelope_pb2.Envelope,
    *,
    re_enrol: bool = False,
    days: int = MEMBER_DAYS,
    now: datetime | None = None,
) -> Enrolled:
    """Register ``spec`` under the request's keys (or re-enrol a revoked member)."""
    now = now or datetime.now(UTC)
    verified = checked_request(request, spec.member_id)
    existing = session.get(MemberRow, spec.member_id)
    if existing is not None and existing.uscc == "":
        raise _refuse(f"{spec.member_id} is the hub's own identity", "member_id")
    taken = session.get(MemberKeyRow, verified.signing_key.key_id)
    if taken is not None and taken.member_id != spec.member_id:
        raise _refuse("this signing key is already registered to another member")
    old_tls = _certified_key_ids(session, spec.member_id)
    enrolment = decide_enrolment(
        existing,
        [k.key_id for k in existing.keys] if existing is not None else [],
        old_tls,
        verified,
        re_enrol=re_enrol,
    )
    cert = ca.issue(
        verified.tls_public_key, spec.name, member_id=spec.member_id, days=days, now=now
    )
    row = existing or MemberRow(member_id=spec.member_id, created_at=now)
    row.name = spec.name
    row.uscc = spec.uscc
    row.division_code = spec.division_code
    row.level = int(spec.level)
    row.subsystem = spec.subsystem
    row.legacy_uscc = int(spec.legacy_uscc)
    row.status = ACTIVE
    row.revoked_at = None
    row.revoke_reason = ""
    row.enrolment = enrolment
    _set_current(row, cert)
    row.roles = [MemberRoleRow(role=int(r)) for r in spec.roles]
    # Keys of earlier enrolments stay (history) with their older enrolment number and a
    # window closed now: retired for new messages, still verifying what they signed before.
    earlier = list(row.keys) if existing else []
    for key in earlier:
        if key.valid_until is None or key.valid_until > now:
            key.valid_until = now
    row.keys = [*earlier, _signing_key_row(verified, enrolment, now)]
    if existing is None:
        session.add(row)
    session.flush()
    session.add(_certificate_row(spec.member_id, cert, enrolment, now))
    session.flush()
    return Enrolled(spec.member_id, spec.name, cert, verified.signing_key.key_id, enrolment, row)


def renew_member(
    session: Session,
    ca: CertificateAuthority,
    member_id: str,
    request: envelope_pb2.Envelope,
    *,
    days: int = MEMBER_DAYS,
    now: datetime | None = None,
) -> Enrolled:
    """A new certificate for an active member; its other certificates stay valid until their
    own expiry (overlap). The request may carry a new TLS key; its signing key must be one of
    the member's current keys (changing signing keys is key rotation, not renewal)."""
    now = now or datetime.now(UTC)
    row = session.get(MemberRow, member_id)
    if row is None or row.uscc == "":
        raise _refuse(f"no member {member_id}; enrol it with `xhub member add --csr`", "member_id")
    verified = checked_request(request, member_id)
    if row.status != ACTIVE:
        revoked = when(row.revoked_at) if row.revoked_at else "an unknown date"
        raise _refuse(
            f"member {member_id} is revoked since {revoked}; a revoked member is not renewed "
            "but re-enrolled: `xhub member add --csr FILE --re-enrol ...`",
            "member_id",
        )
    current = {
        k.key_id
        for k in row.keys
        if k.enrolment == row.enrolment and (k.valid_until is None or k.valid_until > now)
    }
    if verified.signing_key.key_id not in current:
        raise _refuse(
            "the request's signing key is not a current signing key of "
            f"{member_id}: renewal keeps the signing key (sign the request with it)"
        )
    cert = ca.issue(verified.tls_public_key, row.name, member_id=member_id, days=days, now=now)
    _set_current(row, cert)
    session.add(_certificate_row(member_id, cert, row.enrolment, now))
    session.flush()
    return Enrolled(member_id, row.name, cert, verified.signing_key.key_id, row.enrolment, row)


def certificates_of(session: Session, member_id: str) -> list[MemberCertificateRow]:
    return list(
        session.scalars(
            select(MemberCertificateRow)
            .where(MemberCertificateRow.member_id == member_id)
            .order_by(
                MemberCertificateRow.enrolment,
                MemberCertificateRow.issued_at,
                MemberCertificateRow.not_after,
            )
        )
    )


def _certified_key_ids(session: Session, member_id: str) -> list[str]:
    return [
        key_id_for(x509.load_der_x509_certificate(c.certificate_der).public_key())  # type: ignore[arg-type]
        for c in certificates_of(session, member_id)
    ]


def _set_current(row: MemberRow, cert: x509.Certificate) -> None:
    row.certificate_der = cert.public_bytes(Encoding.DER)
    row.certificate_serial = format(cert.serial_number, "x")
    row.not_after = cert.not_valid_after_utc


def _certificate_row(
    member_id: str, cert: x509.Certificate, enrolment: int, now: datetime
) -> MemberCertificateRow:
    return MemberCertificateRow(
        member_id=member_id,
        serial=format(cert.serial_number, "x"),
        certificate_der=cert.public_bytes(Encoding.DER),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        issued_at=now,
        enrolment=enrolment,
        revoked_at=None,
    )


def _signing_key_row(verified: VerifiedRequest, enrolment: int, now: datetime) -> MemberKeyRow:
    key = verified.signing_key
    return MemberKeyRow(
        key_id=key.key_id,
        algorithm=int(key.algorithm),
        public_key_der=public_key_der(key.public_key),
        created_at=now,
        valid_from=now,
        enrolment=enrolment,
    )
