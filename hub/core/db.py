"""Database schema and engine (SQLite by default, PostgreSQL unchanged).

The schema is created and changed only by Alembic migrations in
``hub/migrations``; the models here mirror them for queries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    BigInteger,
    Engine,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    inspect,
)
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Mapped, mapped_column, relationship, sessionmaker
from sqlalchemy.sql.dml import UpdateBase

from xhub.storage import SQLITE_BUSY_TIMEOUT_MS, Base, UtcDateTime, make_engine, table_of, utcnow

__all__ = ["SQLITE_BUSY_TIMEOUT_MS", "Base", "UtcDateTime", "make_engine", "table_of", "utcnow"]


class MemberRow(Base):
    """A participant (接入单位)."""

    __tablename__ = "members"

    member_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    uscc: Mapped[str] = mapped_column(String(18), index=True)
    division_code: Mapped[str] = mapped_column(String(6), index=True)
    level: Mapped[int] = mapped_column(Integer)
    subsystem: Mapped[str] = mapped_column(String(64), default="")
    status: Mapped[int] = mapped_column(Integer)
    certificate_der: Mapped[bytes] = mapped_column(LargeBinary)
    certificate_serial: Mapped[str] = mapped_column(String(64))
    not_after: Mapped[datetime] = mapped_column(UtcDateTime())
    legacy_uscc: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    revoke_reason: Mapped[str] = mapped_column(Text, default="")
    # 1 at the first enrolment, +1 at each re-enrolment (after a revocation); keys and
    # certificates of an earlier enrolment are retired and refused.
    enrolment: Mapped[int] = mapped_column(Integer, default=1)

    roles: Mapped[list[MemberRoleRow]] = relationship(
        back_populates="member", cascade="all, delete-orphan", lazy="selectin"
    )
    keys: Mapped[list[MemberKeyRow]] = relationship(
        back_populates="member", cascade="all, delete-orphan", lazy="selectin"
    )


class MemberRoleRow(Base):
    __tablename__ = "member_roles"

    member_id: Mapped[str] = mapped_column(
        ForeignKey("members.member_id", ondelete="CASCADE"), primary_key=True
    )
    role: Mapped[int] = mapped_column(Integer, primary_key=True)
    member: Mapped[MemberRow] = relationship(back_populates="roles")


class MemberKeyRow(Base):
    """A message-signing key bound to a member (签名密钥)."""

    __tablename__ = "member_keys"

    key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    member_id: Mapped[str] = mapped_column(
        ForeignKey("members.member_id", ondelete="CASCADE"), index=True
    )
    algorithm: Mapped[int] = mapped_column(Integer)
    public_key_der: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    # The member enrolment this key was registered under: a key whose enrolment is older
    # than the member's is retired (kept for the history, refused for new messages).
    enrolment: Mapped[int] = mapped_column(Integer, default=1)
    # Validity window (密钥有效期): a message signed with this key must be issued inside
    # [valid_from, valid_until); valid_until is NULL while the key is current.
    valid_from: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    valid_until: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    member: Mapped[MemberRow] = relationship(back_populates="keys")


class MemberCertificateRow(Base):
    """Every TLS certificate the hub issued a member (证书历史): the gate admits any of the
    member's certificates that is unexpired and unrevoked, so a renewal overlaps the old one.
    ``members.certificate_der`` / ``certificate_serial`` / ``not_after`` is the newest."""

    __tablename__ = "member_certificates"

    member_id: Mapped[str] = mapped_column(
        ForeignKey("members.member_id", ondelete="CASCADE"), primary_key=True
    )
    serial: Mapped[str] = mapped_column(String(64), primary_key=True)
    certificate_der: Mapped[bytes] = mapped_column(LargeBinary)
    not_before: Mapped[datetime] = mapped_column(UtcDateTime())
    not_after: Mapped[datetime] = mapped_column(UtcDateTime())
    issued_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    enrolment: Mapped[int] = mapped_column(Integer, default=1)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class SeenMessageRow(Base):
    """Message ids seen inside the clock-skew window (防重放)."""

    __tablename__ = "seen_messages"

    sender: Mapped[str] = mapped_column(String(128), primary_key=True)
    message_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    seen_at: Mapped[datetime] = mapped_column(UtcDateTime())
    issued_at: Mapped[datetime] = mapped_column(UtcDateTime())

    __table_args__ = (Index("ix_seen_messages_issued_at", "issued_at"),)


_DRIVER_SQL: dict[tuple[UpdateBase, str], tuple[str, tuple[str, ...] | None]] = {}


def bulk_execute(
    connection: Connection, statement: UpdateBase, rows: Sequence[Mapping[str, Any]]
) -> None:
    """executemany handed straight to the driver, for hot bulk writes (audit log).

    SQLAlchemy compiles the statement (once per dialect, cached here); only its row-by-row
    parameter processing is skipped, which costs about four times the insert itself. So
    only for columns the driver takes as they are: integers, text, bytes — no dates —
    and for statements built once (module constants: the cache keeps them).
    """
    key = (statement, connection.dialect.name)
    if key not in _DRIVER_SQL:
        compiled = statement.compile(dialect=connection.dialect)
        order = tuple(compiled.positiontup or ()) if compiled.positional else None
        _DRIVER_SQL[key] = (str(compiled), order)
    sql, order = _DRIVER_SQL[key]
    if order is None:
        connection.exec_driver_sql(sql, [dict(row) for row in rows])
    else:
        connection.exec_driver_sql(sql, [tuple(row[name] for name in order) for row in rows])


def session_factory(engine: Engine) -> sessionmaker[Any]:
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent.parent / "migrations"))
    config.attributes["engine"] = engine
    return config


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` with Alembic (never create_all)."""
    command.upgrade(alembic_config(engine), revision)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def table_names(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())


# -- audit log (审计日志) -------------------------------------------------------

AuditId = BigInteger().with_variant(Integer(), "sqlite")


class AuditEntryRow(Base):
    """One exchange attempt; ``entry`` holds the exact leaf bytes, the rest is an index."""

    __tablename__ = "audit_entries"

    id: Mapped[int] = mapped_column(AuditId, primary_key=True, autoincrement=True)
    leaf_index: Mapped[int | None] = mapped_column(BigInteger, unique=True, nullable=True)
    entry: Mapped[bytes] = mapped_column(LargeBinary)
    leaf_hash: Mapped[bytes] = mapped_column(LargeBinary(32), index=True)
    logged_at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    sender: Mapped[str] = mapped_column(String(128), index=True)
    recipient: Mapped[str] = mapped_column(String(128), index=True)
    method: Mapped[str] = mapped_column(String(128), index=True)
    case_id: Mapped[str] = mapped_column(String(64), index=True)
    decision: Mapped[int] = mapped_column(Integer)
    subject_hmac: Mapped[bytes | None] = mapped_column(LargeBinary(32), index=True, nullable=True)


class AuditEnvelopeRow(Base):
    """The original request envelope bytes, for export and offline signature checks."""

    __tablename__ = "audit_envelopes"

    entry_id: Mapped[int] = mapped_column(
        AuditId, ForeignKey("audit_entries.id", ondelete="CASCADE"), primary_key=True
    )
    envelope: Mapped[bytes] = mapped_column(LargeBinary)


class AuditSubjectRow(Base):
    """The subject's code in clear: served to auditor members only, never in a leaf."""

    __tablename__ = "audit_subjects"

    entry_id: Mapped[int] = mapped_column(
        AuditId, ForeignKey("audit_entries.id", ondelete="CASCADE"), primary_key=True
    )
    subject: Mapped[str] = mapped_column(String(64))


class MerkleNodeRow(Base):
    """Hash of the complete perfect subtree (level, index) of the audit tree."""

    __tablename__ = "merkle_nodes"

    level: Mapped[int] = mapped_column(Integer, primary_key=True)
    index: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    hash: Mapped[bytes] = mapped_column(LargeBinary(32))


class AuditTreeRow(Base):
    """The single row the sequencer locks; size and root of the sequenced tree."""

    __tablename__ = "audit_tree"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    root_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    sequencer: Mapped[str] = mapped_column(String(128))
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


class AuditCheckpointRow(Base):
    """Every checkpoint published, kept as history (C2SP signed note)."""

    __tablename__ = "audit_checkpoints"

    tree_size: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    root_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    note: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    # The size of the checkpoint published before this one (None for the first): a row
    # deleted from the middle of the history leaves a link to a size that is not stored.
    previous_size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


# -- e-certificate library and intake (电子证照库 / 一窗受理) ----------------------


class ItemRow(Base):
    """A catalogue item (事项); the requirements are stored as the item's protobuf bytes."""

    __tablename__ = "items"

    code: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    item: Mapped[bytes] = mapped_column(LargeBinary)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


class PreparedCaseRow(Base):
    """A checklist handed to a platform; later pulls are bound to it (预受理)."""

    __tablename__ = "prepared_cases"

    case_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    item_code: Mapped[str] = mapped_column(String(64))
    platform_member_id: Mapped[str] = mapped_column(String(128), index=True)
    applicant_code: Mapped[str] = mapped_column(String(32))
    legal_representative_code: Mapped[str] = mapped_column(String(32))
    purpose: Mapped[str] = mapped_column(String(512))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime())


# -- material library (材料库) -------------------------------------------------


class MaterialRow(Base):
    """Metadata of a stored material; the content lives in the blob store by SHA-256."""

    __tablename__ = "materials"

    material_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    media_type: Mapped[str] = mapped_column(String(100))
    material_type: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    applicant_code: Mapped[str] = mapped_column(String(32))
    source_case: Mapped[str] = mapped_column(String(64))
    uploader: Mapped[str] = mapped_column(String(128))
    uploaded_at: Mapped[datetime] = mapped_column(UtcDateTime())
    valid_until: Mapped[str] = mapped_column(String(10))
    manifest: Mapped[bytes] = mapped_column(LargeBinary)

    __table_args__ = (Index("ix_materials_applicant_type", "applicant_code", "material_type"),)


class BlobIntentRow(Base):
    """An upload about to reference a blob: garbage collection leaves such blobs alone."""

    __tablename__ = "blob_intents"

    intent_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


# -- cases (办件) ---------------------------------------------------------------


class CaseRow(Base):
    """A submitted case; references to certificates and materials, never copies."""

    __tablename__ = "cases"

    case_number: Mapped[str] = mapped_column(String(40), primary_key=True)
    prepared_case_id: Mapped[str] = mapped_column(String(64), unique=True)
    item_code: Mapped[str] = mapped_column(String(64))
    platform_member_id: Mapped[str] = mapped_column(String(128), index=True)
    applicant_code: Mapped[str] = mapped_column(String(32), index=True)
    submission: Mapped[bytes] = mapped_column(LargeBinary)
    dispatch: Mapped[bytes] = mapped_column(LargeBinary)
    overall: Mapped[int] = mapped_column(Integer)
    time_limit_days: Mapped[int] = mapped_column(Integer)
    submitted_at: Mapped[datetime] = mapped_column(UtcDateTime())


class CaseDepartmentRow(Base):
    """The stage of one case at one handling department, and its time limit."""

    __tablename__ = "case_departments"

    case_number: Mapped[str] = mapped_column(
        ForeignKey("cases.case_number", ondelete="CASCADE"), primary_key=True
    )
    department: Mapped[str] = mapped_column(String(128), primary_key=True)
    stage: Mapped[int] = mapped_column(Integer)
    accepted_on: Mapped[str] = mapped_column(String(10))
    deadline: Mapped[str] = mapped_column(String(10))
    warned: Mapped[int] = mapped_column(Integer)
    overdue: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())
    # The sequence of this department's last push for the case (回传序号; 0 before any).
    last_sequence: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class CaseEventRow(Base):
    """Every dispatch, status change and supervision event, in cursor order.

    Streams read this table by cursor, so delivery survives restarts and works across
    hub processes; ``(author, event_id)`` is the idempotency key of pushes.
    """

    __tablename__ = "case_events"

    cursor: Mapped[int] = mapped_column(AuditId, primary_key=True, autoincrement=True)
    case_number: Mapped[str] = mapped_column(String(40), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    recipient: Mapped[str] = mapped_column(String(128))
    author: Mapped[str] = mapped_column(String(128))
    event_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    department: Mapped[str] = mapped_column(String(128))
    stage: Mapped[int] = mapped_column(Integer)
    overall: Mapped[int] = mapped_column(Integer)
    body: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())

    __table_args__ = (
        Index("ix_case_events_recipient_cursor", "recipient", "kind", "cursor"),
        Index("uq_case_events_author_event", "author", "event_id", unique=True),
    )


class HeartbeatRow(Base):
    """A hub process's last successful write (the readiness probe's proof of a writable DB)."""

    __tablename__ = "hub_heartbeats"

    process_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    beat_at: Mapped[datetime] = mapped_column(UtcDateTime())
