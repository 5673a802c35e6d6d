"""Member registry (接入单位管理): add, list, revoke and look up members.

All validation of codes happens here, before anything is written, so a
refused ``member add`` leaves no row or bundle behind. Enrolment from a member's request
(the only way a member gets a certificate) is in ``registry/enrolment.py``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from xhub.hub.core.db import (
    MemberCertificateRow,
    MemberKeyRow,
    MemberRoleRow,
    MemberRow,
    table_of,
)
from xhub.protocol import codes
from xhub.protocol.divisions import check_listed
from xhub.protocol.errors import MalformedError, NotFoundError, shown
from xhub.protocol.signing import (
    PrivateKey,
    PublicKey,
    algorithm_of,
    key_id_for,
    public_key_der,
)
from xhub.v1 import registry_pb2

ROLE_NAMES: dict[str, registry_pb2.Role.ValueType] = {
    "issuer": registry_pb2.ROLE_ISSUER,
    "platform": registry_pb2.ROLE_PLATFORM,
    "department": registry_pb2.ROLE_DEPARTMENT,
    "auditor": registry_pb2.ROLE_AUDITOR,
    "admin": registry_pb2.ROLE_ADMIN,
}
ACTIVE = registry_pb2.MEMBER_STATUS_ACTIVE
REVOKED = registry_pb2.MEMBER_STATUS_REVOKED
SUBSYSTEM_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
KEY_ID_RE = re.compile(r"[0-9a-f]{64}")
MEMBER_ID_RE = re.compile(r"^CN\.\d{6}\.[0-9A-Z]{18}(\.[a-z0-9][a-z0-9-]{0,31})?\Z")


class RegistryError(MalformedError):
    """A member definition is invalid; ``field`` names what to fix."""


def role_name(role: int) -> str:
    return registry_pb2.Role.Name(role).removeprefix("ROLE_").lower()  # type: ignore[arg-type]


def parse_roles(names: Iterable[str]) -> list[registry_pb2.Role.ValueType]:
    roles: list[registry_pb2.Role.ValueType] = []
    for raw in names:
        for name in (part.strip().lower() for part in raw.split(",")):
            if not name:
                continue
            if name not in ROLE_NAMES:
                raise RegistryError(
                    f"unknown role {name!r}; choose from {', '.join(ROLE_NAMES)}",
                    metadata={"field": "roles"},
                )
            if ROLE_NAMES[name] not in roles:
                roles.append(ROLE_NAMES[name])
    if not roles:
        raise RegistryError("a member needs at least one role", metadata={"field": "roles"})
    return roles


def make_member_id(division: str, uscc: str, subsystem: str = "") -> str:
    return f"CN.{division}.{uscc}" + (f".{subsystem}" if subsystem else "")


@dataclass(frozen=True)
class MemberSpec:
    """A validated request to register a member."""

    name: str
    uscc: str
    division_code: str
    level: codes.Level
    roles: Sequence[registry_pb2.Role.ValueType]
    subsystem: str
    legacy_uscc: bool
    warnings: tuple[str, ...]

    @property
    def member_id(self) -> str:
        return make_member_id(self.division_code, self.uscc, self.subsystem)


def validate_member(
    *,
    name: str,
    uscc: str,
    division: str,
    roles: Iterable[str],
    subsystem: str = "",
    allow_legacy_uscc: bool = False,
    allow_unlisted_division: bool = False,
) -> MemberSpec:
    """Check every code before anything is created (the division against the shipped
    GB/T 2260 reference data unless ``allow_unlisted_division``, then a warning)."""
    name = name.strip()
    if not name or len(name) > 200:
        raise RegistryError("name must be 1–200 characters", metadata={"field": "name"})
    try:
        uscc_result = codes.validate_uscc(uscc.strip().upper(), allow_legacy=allow_legacy_uscc)
        division_code = codes.normalize_division(division.strip())
        level = codes.division_level(division_code)
        division_warning = check_listed(division_code, allow_unlisted=allow_unlisted_division)
    except codes.CodeError as exc:
        raise RegistryError(str(exc), metadata={"field": exc.field, "code": exc.reason}) from exc
    if subsystem and not SUBSYSTEM_RE.match(subsystem):
        raise RegistryError(
            "subsystem must be 1–32 of a-z, 0-9 and '-'", metadata={"field": "subsystem"}
        )
    return MemberSpec(
        name=name,
        uscc=uscc_result.code,
        division_code=division_code,
        level=level,
        roles=parse_roles(roles),
        subsystem=subsystem,
        legacy_uscc=uscc_result.legacy,
        warnings=tuple(w for w in [uscc_result.warning, division_warning] if w),
    )


def bind_hub_identity(
    session: Session, member_id: str, name: str, cert_der: bytes, signing_key: PrivateKey
) -> None:
    """Register the hub's own signing key so its responses resolve like any member's."""
    cert = x509.load_der_x509_certificate(cert_der)
    now = datetime.now(UTC)
    row = MemberRow(
        member_id=member_id,
        name=name,
        uscc="",
        division_code=member_id.split(".")[1] if member_id.count(".") >= 2 else "",
        level=0,
        subsystem="",
        status=ACTIVE,
        certificate_der=cert_der,
        certificate_serial=format(cert.serial_number, "x"),
        not_after=cert.not_valid_after_utc,
        legacy_uscc=0,
        created_at=now,
        revoke_reason="",
    )
    row.roles = [MemberRoleRow(role=int(registry_pb2.ROLE_ADMIN))]
    row.keys = [_key_row(signing_key.public_key(), now)]
    session.add(row)


def _key_row(public_key: PublicKey, now: datetime) -> MemberKeyRow:
    return MemberKeyRow(
        key_id=key_id_for(public_key),
        algorithm=int(algorithm_of(public_key)),
        public_key_der=public_key_der(public_key),
        created_at=now,
        valid_from=now,
    )


def get_member(session: Session, member_id: str) -> MemberRow:
    row = session.get(MemberRow, member_id)
    if row is None or row.uscc == "":
        raise NotFoundError(
            f"no member {shown(member_id)!r}", metadata={"member_id": shown(member_id)}
        )
    return row


def list_members(
    session: Session,
    *,
    level: int = 0,
    role: int = 0,
    division_prefix: str = "",
    include_revoked: bool = False,
    after: str = "",
    limit: int = 100,
) -> list[MemberRow]:
    query = select(MemberRow).where(MemberRow.uscc != "").order_by(MemberRow.member_id)
    if level:
        query = query.where(MemberRow.level == level)
    if role:
        query = query.where(
            MemberRow.member_id.in_(
                select(MemberRoleRow.member_id).where(MemberRoleRow.role == role)
            )
        )
    if division_prefix:
        query = query.where(MemberRow.division_code.startswith(division_prefix))
    if not include_revoked:
        query = query.where(MemberRow.status == ACTIVE)
    if after:
        query = query.where(MemberRow.member_id > after)
    return list(session.scalars(query.limit(limit)))


def revoke_member(
    session: Session, member_id: str, reason: str, *, now: datetime | None = None
) -> MemberRow:
    """Mark revoked; every later call by this member is refused (caller commits)."""
    if not reason.strip():
        raise RegistryError("a revocation needs a reason", metadata={"field": "reason"})
    row = get_member(session, member_id)
    now = now or datetime.now(UTC)
    row.status = REVOKED
    row.revoked_at = now
    row.revoke_reason = reason.strip()
    # Every certificate of the member goes with it (renewals overlap, revocation does not).
    session.execute(
        update(MemberCertificateRow)
        .where(
            MemberCertificateRow.member_id == member_id,
            MemberCertificateRow.revoked_at.is_(None),
        )
        .values(revoked_at=now)
    )
    return row


KeyFields = tuple[str, int, bytes, datetime | None, datetime | None]


def _public_key(
    key_id: str, algorithm: int, der: bytes, since: datetime | None, until: datetime | None
) -> registry_pb2.PublicKey:
    key = registry_pb2.PublicKey(
        key_id=key_id,
        algorithm=algorithm,  # type: ignore[arg-type]
        public_key_der=der,
    )
    if since is not None:
        key.valid_from.FromDatetime(since)
    if until is not None:
        key.valid_until.FromDatetime(until)
    return key


def _member_message(
    row: Any, roles: Iterable[int], keys: Iterable[KeyFields]
) -> registry_pb2.Member:
    """The one place a member becomes its proto, from an ORM row or a Core row alike."""
    return registry_pb2.Member(
        member_id=row.member_id,
        name=row.name,
        uscc=row.uscc,
        division_code=row.division_code,
        level=row.level,
        roles=sorted(roles),  # type: ignore[arg-type]
        subsystem=row.subsystem,
        status=row.status,
        certificate_der=row.certificate_der,
        signing_keys=[_public_key(*key) for key in keys],
    )


def member_to_proto(row: MemberRow) -> registry_pb2.Member:
    return _member_message(
        row,
        (r.role for r in row.roles),
        (
            (k.key_id, k.algorithm, k.public_key_der, k.valid_from, k.valid_until)
            for k in sorted(row.keys, key=lambda k: (k.valid_from, k.key_id))
        ),
    )


_members = table_of(MemberRow)
# Built once: every lookup (and so every first contact between two members) runs them.
_MEMBER = select(_members).where(
    _members.c.member_id == bindparam("member_id"), _members.c.uscc != ""
)
_ROLES = select(MemberRoleRow.role).where(MemberRoleRow.member_id == bindparam("member_id"))
_KEYS = (
    select(
        MemberKeyRow.key_id,
        MemberKeyRow.algorithm,
        MemberKeyRow.public_key_der,
        MemberKeyRow.valid_from,
        MemberKeyRow.valid_until,
    )
    .where(MemberKeyRow.member_id == bindparam("member_id"))
    .order_by(MemberKeyRow.valid_from, MemberKeyRow.key_id)
)


def member_proto(session: Session, member_id: str) -> registry_pb2.Member:
    """One member as proto, by three small Core queries (the lookup hot path)."""
    connection = session.connection()
    found = {"member_id": member_id}
    row = connection.execute(_MEMBER, found).first()
    if row is None:
        raise NotFoundError(
            f"no member {shown(member_id)!r}", metadata={"member_id": shown(member_id)}
        )
    roles = connection.execute(_ROLES, found).scalars()
    keys = connection.execute(_KEYS, found).all()
    return _member_message(row, roles, [tuple(k) for k in keys])  # type: ignore[misc]


def has_role(row: MemberRow, role: registry_pb2.Role.ValueType) -> bool:
    return any(r.role == role for r in row.roles)


def member_keys_proto(session: Session, member_id: str) -> list[registry_pb2.PublicKey]:
    """Every signing key of ``member_id`` with its window, oldest first."""
    rows = session.connection().execute(_KEYS, {"member_id": member_id}).all()
    return [_public_key(*row) for row in rows]
