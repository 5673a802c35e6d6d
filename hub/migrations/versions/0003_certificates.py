"""E-certificate library, item catalogue and prepared cases.

Revision ID: 0003_certificates
Revises: 0002_audit
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from xhub.hub.core.db import UtcDateTime

revision = "0003_certificates"
down_revision = "0002_audit"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "certificates",
        sa.Column("identifier", sa.String(160), primary_key=True),
        sa.Column("base_identifier", sa.String(160), nullable=False),
        sa.Column("type_code", sa.String(32), nullable=False),
        sa.Column("type_name", sa.String(100), nullable=False),
        sa.Column("number", sa.String(100), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("issuer_code", sa.String(64), nullable=False),
        sa.Column("issuer_name", sa.String(200), nullable=False),
        sa.Column("issuer_member_id", sa.String(128), nullable=False),
        sa.Column("holder_code", sa.String(32), nullable=False),
        sa.Column("holder_code_type", sa.Integer, nullable=False),
        sa.Column("valid_from", sa.String(10), nullable=False),
        sa.Column("valid_until", sa.String(10), nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("raw_status_code", sa.String(32), nullable=False),
        sa.Column("status_reason", sa.Text, nullable=False),
        sa.Column("is_latest", sa.Integer, nullable=False),
        sa.Column("predecessor", sa.String(160), nullable=False),
        sa.Column("file_sha256", sa.LargeBinary(32), nullable=True),
        sa.Column("envelope", sa.LargeBinary, nullable=False),
        sa.Column("published_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
    )
    op.create_index("ix_certificates_base_identifier", "certificates", ["base_identifier"])
    op.create_index("ix_certificates_issuer_member_id", "certificates", ["issuer_member_id"])
    op.create_index(
        "ix_certificates_holder_type", "certificates", ["holder_code", "type_code", "is_latest"]
    )
    op.create_index("ix_certificates_number_type", "certificates", ["number", "type_code"])
    op.create_table(
        "items",
        sa.Column("code", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("item", sa.LargeBinary, nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
    )
    op.create_table(
        "prepared_cases",
        sa.Column("case_id", sa.String(64), primary_key=True),
        sa.Column("item_code", sa.String(64), nullable=False),
        sa.Column("platform_member_id", sa.String(128), nullable=False),
        sa.Column("applicant_code", sa.String(32), nullable=False),
        sa.Column("legal_representative_code", sa.String(32), nullable=False),
        sa.Column("purpose", sa.String(512), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("expires_at", UtcDateTime(), nullable=False),
    )
    op.create_index(
        "ix_prepared_cases_platform_member_id", "prepared_cases", ["platform_member_id"]
    )


def downgrade() -> None:
    op.drop_table("prepared_cases")
    op.drop_table("items")
    op.drop_table("certificates")
