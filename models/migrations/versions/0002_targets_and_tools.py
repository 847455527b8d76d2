"""targets and tools: callable targets, tool schemas, agent outcome and steps

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("dataset_item") as batch_op:
        batch_op.add_column(sa.Column("tools", JSON, nullable=True))
    with op.batch_alter_table("experiment") as batch_op:
        batch_op.add_column(sa.Column("target", sa.String(length=300), nullable=True))
    with op.batch_alter_table("result") as batch_op:
        batch_op.add_column(sa.Column("outcome", sa.String(length=50), nullable=True))
        batch_op.add_column(sa.Column("steps", JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("result") as batch_op:
        batch_op.drop_column("steps")
        batch_op.drop_column("outcome")
    with op.batch_alter_table("experiment") as batch_op:
        batch_op.drop_column("target")
    with op.batch_alter_table("dataset_item") as batch_op:
        batch_op.drop_column("tools")
