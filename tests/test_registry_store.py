"""The registry on both backends (SQLite and a real PostgreSQL server).

Migrations, member validation and registration, listing filters and paging, revocation,
and the Member proto.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from alembic import command
from cryptography.hazmat.primitives.serialization import Encoding
from registry_world import (
    BEIJING,
    CITY,
    HUB_ID,
    LEGACY_PILOT,
    LIWAN,
    NOW,
    PROVINCE,
    REGISTRY_TABLES,
    TIANHE,
    bare_engine_fixture,  # noqa: F401  (the bare_engine fixture)
    ca_fixture,  # noqa: F401  (the ca fixture)
    counts,
    engine_fixture,  # noqa: F401  (the engine fixture)
    head_revision,
    member_id_for,
    register,
    register_sample,
    sessions_fixture,  # noqa: F401  (the sessions fixture)
    uscc_for,
)
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from xhub.hub.core.ca import CertificateAuthority
from xhub.hub.core.db import (
    SeenMessageRow,
    alembic_config,
    current_revision,
    make_engine,
    migrate,
    table_names,
)
from xhub.hub.registry.store import (
    ACTIVE,
    REVOKED,
    RegistryError,
    bind_hub_identity,
    get_member,
    list_members,
    member_to_proto,
    revoke_member,
)
from xhub.protocol import codes
from xhub.protocol.errors import MalformedError, NotFoundError
from xhub.protocol.pki import load_certificate, verify_member_certificate
from xhub.protocol.signing import ECDSA_P256, ED25519, KeySigner, KeyVerifier, key_id_for
from xhub.v1 import registry_pb2

# --------------------------------------------------------------------------- migrations


def test_migrate_creates_the_schema_at_head(bare_engine: Engine):
    assert current_revision(bare_engine) is None
    assert not REGISTRY_TABLES & table_names(bare_engine)
    migrate(bare_engine)
    head = head_revision(bare_engine)
    assert head is not None
    assert current_revision(bare_engine) == head
    assert table_names(bare_engine) >= REGISTRY_TABLES
    assert "alembic_version" in table_names(bare_engine)


def test_migrate_twice_is_a_no_op(engine: Engine, sessions: sessionmaker[Session]):
    with sessions.begin() as session:
        session.add(SeenMessageRow(sender="CN.A", message_id="m-1", seen_at=NOW, issued_at=NOW))
    before_tables = table_names(engine)
    before_revision = current_revision(engine)
    migrate(engine)
    assert current_revision(engine) == before_revision == head_revision(engine)
    assert table_names(engine) == before_tables
    with sessions() as session:
        kept = session.get(SeenMessageRow, ("CN.A", "m-1"))
        assert kept is not None
        assert kept.issued_at == NOW


def test_downgrade_to_base_drops_the_tables(engine: Engine):
    command.downgrade(alembic_config(engine), "base")
    assert current_revision(engine) is None
    assert table_names(engine) <= {"alembic_version"}
    # and the schema comes back cleanly
    migrate(engine)
    assert current_revision(engine) == head_revision(engine)
    assert table_names(engine) >= REGISTRY_TABLES


def test_sqlite_engine_pragmas(tmp_path: Any):
    engine = make_engine(f"sqlite:///{tmp_path / 'p.db'}")
    try:
        with engine.connect() as connection:
            pragma = connection.exec_driver_sql
            assert pragma("PRAGMA journal_mode").scalar() == "wal"
            assert pragma("PRAGMA foreign_keys").scalar() == 1
            assert pragma("PRAGMA synchronous").scalar() == 1  # NORMAL
            assert pragma("PRAGMA busy_timeout").scalar() == 10_000
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- add_member


def test_add_member_writes_member_roles_and_key(
    sessions: sessionmaker[Session], ca: CertificateAuthority
):
    issued = register(
        sessions,
        ca,
        name="  荔湾区行政审批局 ",
        uscc=uscc_for("440103", "3H8J2K4L").lower(),
        division="440103000000",
        roles=["issuer,department", "issuer"],
        subsystem="approval",
    )
    member_id = member_id_for("440103", "3H8J2K4L") + ".approval"
    assert issued.spec.member_id == member_id
    with sessions() as session:
        row = get_member(session, member_id)
        assert row.name == "荔湾区行政审批局"
        assert row.uscc == uscc_for("440103", "3H8J2K4L")
        assert row.division_code == "440103"
        assert row.level == registry_pb2.LEVEL_DISTRICT
        assert row.subsystem == "approval"
        assert row.status == ACTIVE
        assert row.legacy_uscc == 0
        assert row.created_at == NOW
        assert row.revoked_at is None
        assert sorted(r.role for r in row.roles) == [
            registry_pb2.ROLE_ISSUER,
            registry_pb2.ROLE_DEPARTMENT,
        ]
        # the signing key only: the TLS key is for mutual TLS, never for messages
        assert [k.key_id for k in row.keys] == [key_id_for(issued.signing_key.public_key())]
        cert = load_certificate(row.certificate_der)
        assert verify_member_certificate(cert, ca.certificate) == member_id
        assert row.certificate_serial == format(cert.serial_number, "x")
        assert row.not_after == cert.not_valid_after_utc
    assert counts(sessions) == {"members": 1, "member_roles": 2, "member_keys": 1}


def _bad_check_char() -> dict[str, Any]:
    good = uscc_for("440100", "0A7K3QX1")
    wrong = next(c for c in codes.USCC_CHARSET if c != good[-1])
    return {"uscc": good[:-1] + wrong}


@pytest.mark.parametrize(
    ("override", "field", "reason"),
    [
        (_bad_check_char(), "uscc", "USCC_CHECK"),
        ({"uscc": LEGACY_PILOT}, "uscc", "USCC_CHECK"),
        ({"uscc": "91440100MB2C904"}, "uscc", "USCC_LENGTH"),
        ({"uscc": "9144010OMB2C9041I3"}, "uscc", "USCC_CHARSET"),
        ({"division": "990000"}, "division_code", "DIVISION_PROVINCE"),
        ({"division": "44010"}, "division_code", "DIVISION_FORMAT"),
        ({"division": "440103001000"}, "division_code", "DIVISION_TOWNSHIP"),
        ({"roles": ["mayor"]}, "roles", None),
        ({"roles": ["issuer,"]}, None, None),  # valid: empty parts are ignored
        ({"roles": [""]}, "roles", None),
        ({"subsystem": "Bad_Name"}, "subsystem", None),
        ({"name": "   "}, "name", None),
    ],
    ids=[
        "uscc-check-char",
        "legacy-pilot-without-override",
        "uscc-length",
        "uscc-charset",
        "division-province",
        "division-format",
        "division-township",
        "unknown-role",
        "trailing-comma-role-ok",
        "no-role",
        "bad-subsystem",
        "blank-name",
    ],
)
def test_invalid_member_is_refused_and_nothing_written(
    sessions: sessionmaker[Session],
    ca: CertificateAuthority,
    override: dict[str, Any],
    field: str | None,
    reason: str | None,
):
    values: dict[str, Any] = {
        "name": "广州市市场监督管理局",
        "uscc": uscc_for("440100", "0A7K3QX1"),
        "division": "440100",
        "roles": ["issuer"],
    } | override
    if field is None:
        register(sessions, ca, **values)
        assert counts(sessions)["members"] == 1
        return
    with pytest.raises(RegistryError) as info:
        register(sessions, ca, **values)
    assert isinstance(info.value, MalformedError)
    assert info.value.metadata["field"] == field
    if reason is not None:
        assert info.value.metadata["code"] == reason
    assert counts(sessions) == {"members": 0, "member_roles": 0, "member_keys": 0}


def test_legacy_pilot_uscc_needs_the_override_and_is_recorded(
    sessions: sessionmaker[Session], ca: CertificateAuthority
):
    issued = register(
        sessions,
        ca,
        name="福州市某试点单位",
        uscc=LEGACY_PILOT,
        division="350100",
        roles=["department"],
        allow_legacy_uscc=True,
    )
    assert issued.spec.legacy_uscc
    assert issued.spec.warnings and "legacy" in issued.spec.warnings[0]
    with sessions() as session:
        row = get_member(session, f"CN.350100.{LEGACY_PILOT}")
        assert row.legacy_uscc == 1
        assert row.uscc == LEGACY_PILOT
        assert row.level == registry_pb2.LEVEL_MUNICIPAL


def test_duplicate_member_is_refused_and_first_row_intact(
    sessions: sessionmaker[Session], ca: CertificateAuthority
):
    first = register_sample(sessions, ca, CITY)
    member_id = first.spec.member_id
    with sessions() as session:
        before = get_member(session, member_id)
        cert_before = before.certificate_der
        keys_before = [k.key_id for k in before.keys]
    with pytest.raises(RegistryError) as info:
        register(
            sessions,
            ca,
            name="冒名单位",
            uscc=uscc_for("440100", "0A7K3QX1"),
            division="440100",
            roles=["admin"],
            signing_algorithm=ED25519,
        )
    assert info.value.metadata["field"] == "member_id"
    with sessions() as session:
        after = get_member(session, member_id)
        assert after.name == CITY[0]
        assert after.certificate_der == cert_before
        assert [k.key_id for k in after.keys] == keys_before
        assert [r.role for r in after.roles] == [registry_pb2.ROLE_ISSUER]
    assert counts(sessions) == {"members": 1, "member_roles": 1, "member_keys": 1}


# --------------------------------------------------------------------------- listing


@pytest.fixture
def directory(sessions: sessionmaker[Session], ca: CertificateAuthority) -> dict[str, str]:
    """Five members in three provinces' worth of levels; Tianhe revoked; the hub itself."""
    ids = {}
    for key, sample in {
        "province": PROVINCE,
        "city": CITY,
        "liwan": LIWAN,
        "tianhe": TIANHE,
        "beijing": BEIJING,
    }.items():
        ids[key] = register_sample(sessions, ca, sample).spec.member_id
    with sessions.begin() as session:
        revoke_member(session, ids["tianhe"], "机构撤并", now=NOW)
        hub_key = ca.private_key
        bind_hub_identity(
            session, HUB_ID, "xhub", ca.certificate.public_bytes(Encoding.DER), hub_key
        )
    return ids


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({}, ["province", "city", "liwan", "beijing"]),
        ({"include_revoked": True}, ["province", "city", "liwan", "tianhe", "beijing"]),
        ({"level": registry_pb2.LEVEL_PROVINCE}, ["province"]),
        ({"level": registry_pb2.LEVEL_MUNICIPAL}, ["city"]),
        ({"level": registry_pb2.LEVEL_DISTRICT}, ["liwan", "beijing"]),
        (
            {"level": registry_pb2.LEVEL_DISTRICT, "include_revoked": True},
            ["liwan", "tianhe", "beijing"],
        ),
        ({"role": registry_pb2.ROLE_ISSUER}, ["city", "liwan"]),
        ({"role": registry_pb2.ROLE_DEPARTMENT}, ["liwan"]),
        ({"role": registry_pb2.ROLE_DEPARTMENT, "include_revoked": True}, ["liwan", "tianhe"]),
        ({"role": registry_pb2.ROLE_ADMIN}, ["province"]),  # not the hub's own row
        ({"division_prefix": "4401"}, ["city", "liwan"]),
        ({"division_prefix": "44"}, ["province", "city", "liwan"]),
        ({"division_prefix": "11"}, ["beijing"]),
        ({"division_prefix": "32"}, []),
        (
            {
                "level": registry_pb2.LEVEL_DISTRICT,
                "role": registry_pb2.ROLE_DEPARTMENT,
                "division_prefix": "4401",
                "include_revoked": True,
            },
            ["liwan", "tianhe"],
        ),
    ],
)
def test_list_members_filters(
    sessions: sessionmaker[Session],
    directory: dict[str, str],
    filters: dict[str, Any],
    expected: list[str],
):
    with sessions() as session:
        rows = list_members(session, **filters)
        listed = [row.member_id for row in rows]
    assert listed == sorted(directory[k] for k in expected)
    assert HUB_ID not in listed


@pytest.mark.parametrize("limit", [1, 2, 3, 10])
@pytest.mark.parametrize("include_revoked", [False, True])
def test_list_members_pages_with_after(
    sessions: sessionmaker[Session], directory: dict[str, str], limit: int, include_revoked: bool
):
    with sessions() as session:
        everything = [
            r.member_id for r in list_members(session, include_revoked=include_revoked, limit=100)
        ]
        pages: list[list[str]] = []
        after = ""
        while True:
            page = [
                r.member_id
                for r in list_members(
                    session, include_revoked=include_revoked, after=after, limit=limit
                )
            ]
            if not page:
                break
            assert len(page) <= limit
            pages.append(page)
            after = page[-1]
    assert [m for page in pages for m in page] == everything
    assert len(everything) == (5 if include_revoked else 4)
    assert len(pages) == -(-len(everything) // limit)


def test_hub_identity_is_not_a_listed_member(
    sessions: sessionmaker[Session], directory: dict[str, str]
):
    with sessions() as session, pytest.raises(NotFoundError):
        get_member(session, HUB_ID)


# --------------------------------------------------------------------------- revocation


@pytest.mark.parametrize("reason", ["", "   ", "\t\n"])
def test_revoke_requires_a_reason(
    sessions: sessionmaker[Session], ca: CertificateAuthority, reason: str
):
    member_id = register_sample(sessions, ca, CITY).spec.member_id
    with pytest.raises(RegistryError) as info, sessions.begin() as session:
        revoke_member(session, member_id, reason)
    assert info.value.metadata["field"] == "reason"
    with sessions() as session:
        row = get_member(session, member_id)
        assert row.status == ACTIVE
        assert row.revoked_at is None
        assert row.revoke_reason == ""


def test_revoke_sets_status_time_and_reason(
    sessions: sessionmaker[Session], ca: CertificateAuthority
):
    member_id = register_sample(sessions, ca, CITY).spec.member_id
    when = NOW + timedelta(days=3)
    with sessions.begin() as session:
        revoke_member(session, member_id, "  证书私钥泄露 ", now=when)
    with sessions() as session:
        row = get_member(session, member_id)
        assert row.status == REVOKED
        assert row.revoked_at == when
        assert row.revoked_at.tzinfo is not None
        assert row.revoke_reason == "证书私钥泄露"
        assert member_to_proto(row).status == registry_pb2.MEMBER_STATUS_REVOKED
        assert list_members(session) == []
        assert [r.member_id for r in list_members(session, include_revoked=True)] == [member_id]


def test_revoke_unknown_member_is_not_found(sessions: sessionmaker[Session]):
    with pytest.raises(NotFoundError), sessions.begin() as session:
        revoke_member(session, "CN.440100.NOSUCHMEMBER000000", "test")


# --------------------------------------------------------------------------- proto


@pytest.mark.parametrize(
    ("algorithm", "expected_algorithms"),
    [
        (ECDSA_P256, [registry_pb2.KEY_ALGORITHM_ECDSA_P256_SHA256]),
        (ED25519, [registry_pb2.KEY_ALGORITHM_ED25519]),
    ],
    ids=["ecdsa", "ed25519"],
)
def test_member_to_proto_round_trip(
    sessions: sessionmaker[Session],
    ca: CertificateAuthority,
    algorithm: Any,
    expected_algorithms: list[int],
):
    issued = register(
        sessions,
        ca,
        name=LIWAN[0],
        uscc=uscc_for("440103", "3H8J2K4L"),
        division="440103",
        roles=["department", "issuer"],
        subsystem="approval",
        signing_algorithm=algorithm,
    )
    with sessions() as session:
        proto = member_to_proto(get_member(session, issued.spec.member_id))
    member = registry_pb2.Member.FromString(proto.SerializeToString())
    assert member == proto
    assert member.member_id == issued.spec.member_id
    assert member.name == LIWAN[0]
    assert member.uscc == uscc_for("440103", "3H8J2K4L")
    assert member.division_code == "440103"
    assert member.level == registry_pb2.LEVEL_DISTRICT
    assert list(member.roles) == [registry_pb2.ROLE_ISSUER, registry_pb2.ROLE_DEPARTMENT]
    assert member.subsystem == "approval"
    assert member.status == registry_pb2.MEMBER_STATUS_ACTIVE
    # the certificate verifies offline against the hub CA and names the member
    cert = load_certificate(member.certificate_der)
    assert verify_member_certificate(cert, ca.certificate) == member.member_id
    # the signing key the member generated (never its TLS key)
    assert [k.algorithm for k in member.signing_keys] == expected_algorithms
    assert {k.key_id for k in member.signing_keys} == {key_id_for(issued.signing_key.public_key())}
    for key in member.signing_keys:
        assert KeyVerifier.from_der(key.public_key_der).key_id == key.key_id
    # a message signed by the member verifies with the published key of the same id
    signer = KeySigner(issued.signing_key)
    published = {k.key_id: k for k in member.signing_keys}[signer.key_id]
    KeyVerifier.from_der(published.public_key_der).verify(signer.sign(b"PAE"), b"PAE")
    assert published.algorithm == signer.algorithm
