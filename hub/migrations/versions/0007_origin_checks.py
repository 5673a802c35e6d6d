"""Each department's pushes for a case are numbered (回传序号): the last number it used.

Revision ID: 0007_origin_checks
Revises: 0006_heartbeats
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_origin_checks"
down_revision = "0006_heartbeats"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("case_departments") as batch:
        batch.add_column(
            sa.Column("last_sequence", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("case_departments") as batch:
        batch.drop_column("last_sequence")
