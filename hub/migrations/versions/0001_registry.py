"""Member registry, signing keys and the replay store.

Revision ID: 0001_registry
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from xhub.hub.core.db import UtcDateTime

revision = "0001_registry"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "members",
        sa.Column("member_id", sa.String(128), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("uscc", sa.String(18), nullable=False),
        sa.Column("division_code", sa.String(6), nullable=False),
        sa.Column("level", sa.Integer, nullable=False),
        sa.Column("subsystem", sa.String(64), nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("certificate_der", sa.LargeBinary, nullable=False),
        sa.Column("certificate_serial", sa.String(64), nullable=False),
        sa.Column("not_after", UtcDateTime(), nullable=False),
        sa.Column("legacy_uscc", sa.Integer, nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("revoked_at", UtcDateTime(), nullable=True),
        sa.Column("revoke_reason", sa.Text, nullable=False),
    )
    op.create_index("ix_members_uscc", "members", ["uscc"])
    op.create_index("ix_members_division_code", "members", ["division_code"])
    op.create_table(
        "member_roles",
        sa.Column(
            "member_id",
            sa.String(128),
            sa.ForeignKey("members.member_id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("role", sa.Integer, primary_key=True),
    )
    op.create_table(
        "member_keys",
        sa.Column("key_id", sa.String(64), primary_key=True),
        sa.Column(
            "member_id",
            sa.String(128),
            sa.ForeignKey("members.member_id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("algorithm", sa.Integer, nullable=False),
        sa.Column("public_key_der", sa.LargeBinary, nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
    )
    op.create_index("ix_member_keys_member_id", "member_keys", ["member_id"])
    op.create_table(
        "seen_messages",
        sa.Column("sender", sa.String(128), primary_key=True),
        sa.Column("message_id", sa.String(64), primary_key=True),
        sa.Column("seen_at", UtcDateTime(), nullable=False),
        sa.Column("issued_at", UtcDateTime(), nullable=False),
    )
    op.create_index("ix_seen_messages_issued_at", "seen_messages", ["issued_at"])


def downgrade() -> None:
    op.drop_table("seen_messages")
    op.drop_table("member_keys")
    op.drop_table("member_roles")
    op.drop_table("members")
