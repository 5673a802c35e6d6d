"""The registry's storage tests' world: a migrated database on both backends, the CA, and
a sample directory of members.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from alembic.script import ScriptDirectory
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from xhub.hub.core.ca import CertificateAuthority
from xhub.hub.core.db import (
    MemberKeyRow,
    MemberRoleRow,
    MemberRow,
    alembic_config,
    make_engine,
    migrate,
    session_factory,
)
from xhub.hub.registry.enrolment import enrol_member
from xhub.hub.registry.store import MemberSpec, validate_member
from xhub.protocol import codes
from xhub.protocol.enrolment import make_request
from xhub.protocol.signing import ECDSA_P256, PrivateKey, generate_private_key

HUB_ID = "CN.440000.XHUB"
REGISTRY_TABLES = {"members", "member_roles", "member_keys", "member_certificates", "seen_messages"}
LEGACY_PILOT = "91350100M0001TGQXM"
NOW = datetime(2026, 11, 23, 9, 30, 0, 123456, tzinfo=UTC)

# name, division, org base (8 chars), roles
PROVINCE = ("广东省政务服务数据管理局", "440000", "MB2C9041", ["platform", "admin"])
CITY = ("广州市市场监督管理局", "440100", "0A7K3QX1", ["issuer"])
LIWAN = ("荔湾区行政审批局", "440103", "3H8J2K4L", ["issuer", "department"])
TIANHE = ("天河区人力资源和社会保障局", "440106", "5N6P7Q8R", ["department"])
BEIJING = ("北京市西城区审计局", "110102", "9T1U2W3X", ["auditor"])


def uscc_for(division: str, org: str) -> str:
    return codes.make_uscc("1", "1", division, org)


def member_id_for(division: str, org: str) -> str:
    return f"CN.{division}.{uscc_for(division, org)}"


@dataclass(frozen=True)
class IssuedMember:
    """A member enrolled the CSR way, with the keys its side generated (held by the test)."""

    spec: MemberSpec
    tls_key: ec.EllipticCurvePrivateKey
    signing_key: PrivateKey
    row: MemberRow


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(name="ca", scope="module")
def ca_fixture() -> CertificateAuthority:
    return CertificateAuthority.create("xhub test CA")


@pytest.fixture(name="bare_engine")
def bare_engine_fixture(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture(name="engine")
def engine_fixture(bare_engine: Engine) -> Engine:
    migrate(bare_engine)
    return bare_engine


@pytest.fixture(name="sessions")
def sessions_fixture(engine: Engine) -> sessionmaker[Session]:
    return session_factory(engine)


def head_revision(engine: Engine) -> str | None:
    return ScriptDirectory.from_config(alembic_config(engine)).get_current_head()


def register(
    sessions: sessionmaker[Session],
    ca: CertificateAuthority,
    *,
    name: str,
    uscc: str,
    division: str,
    roles: Sequence[str],
    subsystem: str = "",
    allow_legacy_uscc: bool = False,
    signing_algorithm: Any = ECDSA_P256,
) -> IssuedMember:
    """What `xhub member add` does with the database: validate, then add and commit."""
    with sessions.begin() as session:
        spec = validate_member(
            name=name,
            uscc=uscc,
            division=division,
            roles=list(roles),
            subsystem=subsystem,
            allow_legacy_uscc=allow_legacy_uscc,
        )
        tls_key = ec.generate_private_key(ec.SECP256R1())
        signing_key = generate_private_key(signing_algorithm)
        request = make_request(spec.member_id, tls_key, signing_key)
        enrolled = enrol_member(session, ca, spec, request, now=NOW)
        return IssuedMember(spec, tls_key, signing_key, enrolled.row)


def register_sample(
    sessions: sessionmaker[Session], ca: CertificateAuthority, sample: tuple[Any, ...]
) -> IssuedMember:
    name, division, org, roles = sample
    return register(
        sessions, ca, name=name, uscc=uscc_for(division, org), division=division, roles=roles
    )


def counts(sessions: sessionmaker[Session]) -> dict[str, int]:
    with sessions() as session:
        return {
            row.__tablename__: int(session.scalar(select(func.count()).select_from(row)) or 0)
            for row in (MemberRow, MemberRoleRow, MemberKeyRow)
        }
