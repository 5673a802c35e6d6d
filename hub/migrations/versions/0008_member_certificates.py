"""Member certificate history and enrolment generations (证书历史 / 重新接入).

Every certificate issued to a member is kept (renewals overlap the old certificate until it
expires); ``enrolment`` counts a member's enrolments so keys of an earlier one are retired.
Existing members' current certificates are copied into the history.

Revision ID: 0008_member_certificates
Revises: 0007_origin_checks
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from cryptography import x509

from xhub.hub.core.db import UtcDateTime

revision = "0008_member_certificates"
down_revision = "0007_origin_checks"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("members") as batch:
        batch.add_column(sa.Column("enrolment", sa.Integer(), nullable=False, server_default="1"))
    with op.batch_alter_table("member_keys") as batch:
        batch.add_column(sa.Column("enrolment", sa.Integer(), nullable=False, server_default="1"))
    certificates = op.create_table(
        "member_certificates",
        sa.Column(
            "member_id",
            sa.String(128),
            sa.ForeignKey("members.member_id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("serial", sa.String(64), primary_key=True),
        sa.Column("certificate_der", sa.LargeBinary(), nullable=False),
        sa.Column("not_before", UtcDateTime(), nullable=False),
        sa.Column("not_after", UtcDateTime(), nullable=False),
        sa.Column("issued_at", UtcDateTime(), nullable=False),
        sa.Column("enrolment", sa.Integer(), nullable=False, server_default="1"),
        sa.Column("revoked_at", UtcDateTime(), nullable=True),
    )
    members = sa.table(
        "members",
        sa.column("member_id", sa.String()),
        sa.column("certificate_der", sa.LargeBinary()),
        sa.column("certificate_serial", sa.String()),
        sa.column("not_after", UtcDateTime()),
        sa.column("created_at", UtcDateTime()),
        sa.column("revoked_at", UtcDateTime()),
    )
    rows = []
    for row in op.get_bind().execute(sa.select(members)):
        cert = x509.load_der_x509_certificate(row.certificate_der)
        rows.append(
            {
                "member_id": row.member_id,
                "serial": row.certificate_serial,
                "certificate_der": row.certificate_der,
                "not_before": cert.not_valid_before_utc,
                "not_after": row.not_after,
                "issued_at": row.created_at,
                "enrolment": 1,
                "revoked_at": row.revoked_at,
            }
        )
    if rows:
        op.bulk_insert(certificates, rows)


def downgrade() -> None:
    op.drop_table("member_certificates")
    with op.batch_alter_table("member_keys") as batch:
        batch.drop_column("enrolment")
    with op.batch_alter_table("members") as batch:
        batch.drop_column("enrolment")
