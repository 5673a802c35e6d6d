"""Cases, per-department stages and the case event stream.

Revision ID: 0005_cases
Revises: 0004_materials
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from xhub.hub.core.db import AuditId, UtcDateTime

revision = "0005_cases"
down_revision = "0004_materials"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cases",
        sa.Column("case_number", sa.String(40), primary_key=True),
        sa.Column("prepared_case_id", sa.String(64), nullable=False, unique=True),
        sa.Column("item_code", sa.String(64), nullable=False),
        sa.Column("platform_member_id", sa.String(128), nullable=False),
        sa.Column("applicant_code", sa.String(32), nullable=False),
        sa.Column("submission", sa.LargeBinary, nullable=False),
        sa.Column("dispatch", sa.LargeBinary, nullable=False),
        sa.Column("overall", sa.Integer, nullable=False),
        sa.Column("time_limit_days", sa.Integer, nullable=False),
        sa.Column("submitted_at", UtcDateTime(), nullable=False),
    )
    op.create_index("ix_cases_platform_member_id", "cases", ["platform_member_id"])
    op.create_index("ix_cases_applicant_code", "cases", ["applicant_code"])
    op.create_table(
        "case_departments",
        sa.Column(
            "case_number",
            sa.String(40),
            sa.ForeignKey("cases.case_number", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("department", sa.String(128), primary_key=True),
        sa.Column("stage", sa.Integer, nullable=False),
        sa.Column("accepted_on", sa.String(10), nullable=False),
        sa.Column("deadline", sa.String(10), nullable=False),
        sa.Column("warned", sa.Integer, nullable=False),
        sa.Column("overdue", sa.Integer, nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
    )
    op.create_table(
        "case_events",
        sa.Column("cursor", AuditId, primary_key=True, autoincrement=True),
        sa.Column("case_number", sa.String(40), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("recipient", sa.String(128), nullable=False),
        sa.Column("author", sa.String(128), nullable=False),
        sa.Column("event_id", sa.String(64), nullable=True),
        sa.Column("department", sa.String(128), nullable=False),
        sa.Column("stage", sa.Integer, nullable=False),
        sa.Column("overall", sa.Integer, nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
    )
    op.create_index("ix_case_events_case_number", "case_events", ["case_number"])
    op.create_index(
        "ix_case_events_recipient_cursor", "case_events", ["recipient", "kind", "cursor"]
    )
    op.create_index(
        "uq_case_events_author_event", "case_events", ["author", "event_id"], unique=True
    )


def downgrade() -> None:
    op.drop_table("case_events")
    op.drop_table("case_departments")
    op.drop_table("cases")
