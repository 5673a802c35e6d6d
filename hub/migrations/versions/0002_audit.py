"""Audit log: entries, original envelopes, clear subjects, Merkle nodes, checkpoints.

Revision ID: 0002_audit
Revises: 0001_registry
Create Date: 2026-11-23
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from xhub.hub.core.db import AuditId, UtcDateTime

revision = "0002_audit"
down_revision = "0001_registry"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_entries",
        sa.Column("id", AuditId, primary_key=True, autoincrement=True),
        sa.Column("leaf_index", sa.BigInteger, nullable=True, unique=True),
        sa.Column("entry", sa.LargeBinary, nullable=False),
        sa.Column("leaf_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("logged_at", UtcDateTime(), nullable=False),
        sa.Column("sender", sa.String(128), nullable=False),
        sa.Column("recipient", sa.String(128), nullable=False),
        sa.Column("method", sa.String(128), nullable=False),
        sa.Column("case_id", sa.String(64), nullable=False),
        sa.Column("decision", sa.Integer, nullable=False),
        sa.Column("subject_hmac", sa.LargeBinary(32), nullable=True),
    )
    for column in (
        "leaf_hash",
        "logged_at",
        "sender",
        "recipient",
        "method",
        "case_id",
        "subject_hmac",
    ):
        op.create_index(f"ix_audit_entries_{column}", "audit_entries", [column])
    op.create_table(
        "audit_envelopes",
        sa.Column(
            "entry_id",
            AuditId,
            sa.ForeignKey("audit_entries.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("envelope", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "audit_subjects",
        sa.Column(
            "entry_id",
            AuditId,
            sa.ForeignKey("audit_entries.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("subject", sa.String(64), nullable=False),
    )
    op.create_table(
        "merkle_nodes",
        sa.Column("level", sa.Integer, primary_key=True),
        sa.Column("index", sa.BigInteger, primary_key=True),
        sa.Column("hash", sa.LargeBinary(32), nullable=False),
    )
    tree = op.create_table(
        "audit_tree",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("root_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("sequencer", sa.String(128), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
    )
    op.bulk_insert(
        tree,
        [
            {
                "id": 1,
                "size": 0,
                "root_hash": hashlib.sha256(b"").digest(),
                "sequencer": "",
                "updated_at": datetime.now(UTC),
            }
        ],
    )
    op.create_table(
        "audit_checkpoints",
        sa.Column("tree_size", sa.BigInteger, primary_key=True),
        sa.Column("root_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("note", sa.LargeBinary, nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
    )
    op.create_index("ix_audit_checkpoints_created_at", "audit_checkpoints", ["created_at"])


def downgrade() -> None:
    for table in (
        "audit_checkpoints",
        "audit_tree",
        "merkle_nodes",
        "audit_subjects",
        "audit_envelopes",
        "audit_entries",
    ):
        op.drop_table(table)
