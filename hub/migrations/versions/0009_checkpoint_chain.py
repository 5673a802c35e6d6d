"""Each stored checkpoint names the size of the one before it, so a checkpoint deleted from
the middle of the history is found by the integrity check.

Existing rows are linked in their stored order (the history as it stands when upgrading).

Revision ID: 0009_checkpoint_chain
Revises: 0008_member_certificates
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_checkpoint_chain"
down_revision = "0008_member_certificates"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit_checkpoints") as batch:
        batch.add_column(sa.Column("previous_size", sa.BigInteger(), nullable=True))
    op.execute(
        "UPDATE audit_checkpoints SET previous_size = (SELECT max(earlier.tree_size) "
        "FROM audit_checkpoints AS earlier "
        "WHERE earlier.tree_size < audit_checkpoints.tree_size)"
    )


def downgrade() -> None:
    with op.batch_alter_table("audit_checkpoints") as batch:
        batch.drop_column("previous_size")
