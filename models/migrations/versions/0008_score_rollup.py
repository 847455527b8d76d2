"""score rollup

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06

`score_rollup`: score moments (n, n_unscored, total, total_sq, n_passed) of each online
evaluator's scorer per minute of subject_at, kept at score time, so an online report or
alert check reads one row per minute instead of every Score. Backfilled here from the
existing online Scores (evaluator_id > 0) with one INSERT ... SELECT ... GROUP BY.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# The minute (epoch seconds) of score.subject_at, as models.aggregates computes it.
_MINUTE = {
    "sqlite": "(CAST(strftime('%s', subject_at) AS BIGINT) / 60) * 60",
    "postgresql": "(CAST(floor(EXTRACT(EPOCH FROM subject_at)) AS BIGINT) / 60) * 60",
}

BACKFILL = """
INSERT INTO score_rollup (evaluator_id, scorer, bucket, n, n_unscored, total, total_sq,
                          n_passed)
SELECT evaluator_id, scorer, {minute} AS minute, count(value), count(*) - count(value),
       coalesce(sum(value), 0.0), coalesce(sum(value * value), 0.0),
       coalesce(sum(CASE WHEN value IS NOT NULL AND passed THEN 1 ELSE 0 END), 0)
FROM score
WHERE evaluator_id > 0 AND subject_type = 'run' AND subject_at IS NOT NULL
  AND evaluator_id IN (SELECT id FROM online_evaluator)
GROUP BY evaluator_id, scorer, {minute}
"""


def upgrade() -> None:
    op.create_table(
        "score_rollup",
        sa.Column("evaluator_id", sa.Integer(), nullable=False),
        sa.Column("scorer", sa.String(length=200), nullable=False),
        sa.Column("bucket", sa.BigInteger(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("n_unscored", sa.Integer(), nullable=False),
        sa.Column("total", sa.Float(), nullable=False),
        sa.Column("total_sq", sa.Float(), nullable=False),
        sa.Column("n_passed", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["evaluator_id"], ["online_evaluator.id"],
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("evaluator_id", "scorer", "bucket"),
    )
    minute = _MINUTE[op.get_bind().dialect.name]
    op.execute(BACKFILL.format(minute=minute))


def downgrade() -> None:
    op.drop_table("score_rollup")
