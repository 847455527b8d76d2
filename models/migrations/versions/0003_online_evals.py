"""online evals

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "online_evaluator",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("scorers", JSON, nullable=True),
        sa.Column("sample_rate", sa.Float(), nullable=False),
        sa.Column("every_s", sa.Integer(), nullable=False),
        sa.Column("batch_size", sa.Integer(), nullable=False),
        sa.Column("filters", JSON, nullable=True),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("watermark", sa.Integer(), nullable=False),
        sa.Column("next_due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_tick_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("alert_threshold", sa.Float(), nullable=True),
        sa.Column("alert_window_s", sa.Integer(), nullable=False),
        sa.Column("webhook_url", sa.String(length=1000), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "production_run",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=200), nullable=False),
        sa.Column("external_id", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ingested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("input", JSON, nullable=True),
        sa.Column("output", JSON, nullable=True),
        sa.Column("plan", JSON, nullable=True),
        sa.Column("steps", JSON, nullable=True),
        sa.Column("tool_calls", JSON, nullable=True),
        sa.Column("status", sa.String(length=50), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("model", sa.String(length=200), nullable=True),
        sa.Column("cost_usd", sa.Float(), nullable=True),
        sa.Column("meta", JSON, nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("source", "external_id", name="uq_run_source_external_id"),
    )
    with op.batch_alter_table("production_run", schema=None) as batch_op:
        batch_op.create_index("ix_production_run_created_at", ["created_at"], unique=False)

    op.create_table(
        "online_alert",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("evaluator_id", sa.Integer(), nullable=False),
        sa.Column("scorer", sa.String(length=200), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("mean", sa.Float(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("delivered", sa.Boolean(), nullable=False),
        sa.Column("error", sa.String(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["evaluator_id"],
            ["online_evaluator.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("evaluator_id", "scorer", "window_start", name="uq_alert_window"),
    )
    op.create_table(
        "online_claim",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("evaluator_id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("done_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["evaluator_id"],
            ["online_evaluator.id"],
        ),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["production_run.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("evaluator_id", "run_id", name="uq_claim_evaluator_run"),
    )
    with op.batch_alter_table("online_claim", schema=None) as batch_op:
        batch_op.create_index(
            "ix_online_claim_status_claimed_at", ["status", "claimed_at"], unique=False
        )

    with op.batch_alter_table("score", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("evaluator_id", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(sa.Column("subject_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.drop_constraint(batch_op.f("uq_score_key"), type_="unique")
        batch_op.create_unique_constraint(
            "uq_score_key",
            ["subject_type", "subject_id", "evaluator_id", "scorer", "scorer_version"],
        )
        batch_op.create_index(
            "ix_score_evaluator_subject_at", ["evaluator_id", "subject_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("score", schema=None) as batch_op:
        batch_op.drop_index("ix_score_evaluator_subject_at")
        batch_op.drop_constraint("uq_score_key", type_="unique")
        batch_op.create_unique_constraint(
            batch_op.f("uq_score_key"), ["subject_type", "subject_id", "scorer", "scorer_version"]
        )
        batch_op.drop_column("subject_at")
        batch_op.drop_column("evaluator_id")

    with op.batch_alter_table("online_claim", schema=None) as batch_op:
        batch_op.drop_index("ix_online_claim_status_claimed_at")

    op.drop_table("online_claim")
    op.drop_table("online_alert")
    with op.batch_alter_table("production_run", schema=None) as batch_op:
        batch_op.drop_index("ix_production_run_created_at")

    op.drop_table("production_run")
    op.drop_table("online_evaluator")
