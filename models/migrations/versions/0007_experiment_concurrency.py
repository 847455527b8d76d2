"""experiment concurrency

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05

`experiment.concurrency`: how many items the run evaluated at once, recorded at enqueue
(EVALQ_CONCURRENCY in embedded mode; in distributed mode the summed concurrency of the
live workers' heartbeats), so a report says which concurrency a run used. Null for
experiments enqueued before, and when no live worker was known.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("experiment", schema=None) as batch_op:
        batch_op.add_column(sa.Column("concurrency", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("experiment", schema=None) as batch_op:
        batch_op.drop_column("concurrency")
