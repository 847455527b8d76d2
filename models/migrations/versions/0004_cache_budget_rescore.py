"""cache budget rescore

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "response_cache",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", JSON, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    with op.batch_alter_table("experiment", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("config_version", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(
            sa.Column("cache_mode", sa.String(length=10), server_default="auto", nullable=False)
        )
        batch_op.add_column(sa.Column("max_cost_usd", sa.Float(), nullable=True))

    with op.batch_alter_table("result", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("cached", sa.Boolean(), server_default=sa.false(), nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("result", schema=None) as batch_op:
        batch_op.drop_column("cached")

    with op.batch_alter_table("experiment", schema=None) as batch_op:
        batch_op.drop_column("max_cost_usd")
        batch_op.drop_column("cache_mode")
        batch_op.drop_column("config_version")

    op.drop_table("response_cache")
