"""experiment first start

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04

`experiment.first_started_at`: the first start of an experiment, which a resume or rerun
(they stamp `started_at` again) leaves alone, so a report can give the experiment's whole
span and the last re-run's own. Existing experiments get their `started_at`.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("experiment", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("first_started_at", sa.DateTime(timezone=True), nullable=True)
        )
    op.execute("UPDATE experiment SET first_started_at = started_at")


def downgrade() -> None:
    with op.batch_alter_table("experiment", schema=None) as batch_op:
        batch_op.drop_column("first_started_at")
