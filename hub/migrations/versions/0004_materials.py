"""Material library metadata and blob upload intents.

Revision ID: 0004_materials
Revises: 0003_certificates
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from xhub.hub.core.db import UtcDateTime

revision = "0004_materials"
down_revision = "0003_certificates"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "materials",
        sa.Column("material_id", sa.String(40), primary_key=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("media_type", sa.String(100), nullable=False),
        sa.Column("material_type", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("applicant_code", sa.String(32), nullable=False),
        sa.Column("source_case", sa.String(64), nullable=False),
        sa.Column("uploader", sa.String(128), nullable=False),
        sa.Column("uploaded_at", UtcDateTime(), nullable=False),
        sa.Column("valid_until", sa.String(10), nullable=False),
        sa.Column("manifest", sa.LargeBinary, nullable=False),
    )
    op.create_index("ix_materials_sha256", "materials", ["sha256"])
    op.create_index("ix_materials_applicant_type", "materials", ["applicant_code", "material_type"])
    op.create_table(
        "blob_intents",
        sa.Column("intent_id", sa.String(40), primary_key=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
    )
    op.create_index("ix_blob_intents_sha256", "blob_intents", ["sha256"])


def downgrade() -> None:
    op.drop_table("blob_intents")
    op.drop_table("materials")
