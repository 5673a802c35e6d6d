"""One heartbeat row per hub process: the readiness probe's proof that the database takes writes.

Revision ID: 0006_heartbeats
Revises: 0005_cases
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from xhub.hub.core.db import UtcDateTime

revision = "0006_heartbeats"
down_revision = "0005_cases"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "hub_heartbeats",
        sa.Column("process_id", sa.String(128), primary_key=True),
        sa.Column("beat_at", UtcDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("hub_heartbeats")
