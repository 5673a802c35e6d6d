"""Member signing keys keep their validity window (密钥有效期), so a rotated key stays on
record for verifying what it signed while it was current.

Revision ID: 0010_key_history
Revises: 0009_checkpoint_chain
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from xhub.hub.core.db import UtcDateTime

revision = "0010_key_history"
down_revision = "0009_checkpoint_chain"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("member_keys") as batch:
        batch.add_column(sa.Column("valid_from", UtcDateTime(), nullable=True))
        batch.add_column(sa.Column("valid_until", UtcDateTime(), nullable=True))
    # Every key registered so far has been valid since it was registered.
    op.execute("UPDATE member_keys SET valid_from = created_at")
    with op.batch_alter_table("member_keys") as batch:
        batch.alter_column("valid_from", existing_type=UtcDateTime(), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("member_keys") as batch:
        batch.drop_column("valid_until")
        batch.drop_column("valid_from")
