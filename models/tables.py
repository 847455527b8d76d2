"""SQLModel tables: datasets, experiments, results and scores.

Every row that a task writes has a natural unique key (see ARCHITECTURE.md), so a
task that runs twice upserts instead of inserting a second row. Every timestamp column is
a UTCDateTime: written and read back timezone-aware, in UTC, on SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

from models.types import UTCDateTime

JSONType = sa.JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    """Timezone-aware now, the only clock the tables use."""
    return datetime.now(UTC)


def _json(nullable: bool = True) -> Any:
    return Field(default=None, sa_type=JSONType, nullable=nullable)


def _ts() -> Any:
    return Field(default_factory=utcnow, sa_type=UTCDateTime(), nullable=False)


class ExperimentStatus(StrEnum):
    """Lifecycle of an offline run."""

    PENDING = "pending"  # created, tasks not sent yet
    RUNNING = "running"  # tasks sent, results arriving
    COMPLETED = "completed"  # every (item, repeat) has a Result
    BUDGET_EXCEEDED = "budget_exceeded"  # finished, some items skipped by --max-cost
    FAILED = "failed"  # could not be enqueued; see Experiment.error


class ResultStatus(StrEnum):
    """Outcome of one (item, repeat)."""

    OK = "ok"  # the target produced an output
    ERROR = "error"  # the target failed permanently; Result.error says why
    SKIPPED_BUDGET = "skipped_budget"  # not run: the experiment's cost budget was spent


class SubjectType(StrEnum):
    """What a Score is about."""

    RESULT = "result"  # an offline Result
    RUN = "run"  # an ingested production run (online evals)


# --- datasets -------------------------------------------------------------------------


# A named, versioned set of test cases.
class Dataset(SQLModel, table=True):
    __table_args__ = (sa.UniqueConstraint("name", "version", name="uq_dataset_name_version"),)

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, max_length=200)
    version: str = Field(max_length=64)  # content hash of the normalised items
    source: str | None = Field(default=None, max_length=1000)
    item_count: int = 0
    created_at: datetime = _ts()


# One test case of a dataset.
class DatasetItem(SQLModel, table=True):
    __tablename__ = "dataset_item"
    __table_args__ = (sa.UniqueConstraint("dataset_id", "key", name="uq_item_dataset_key"),)

    id: int | None = Field(default=None, primary_key=True)
    dataset_id: int = Field(foreign_key="dataset.id", index=True)
    key: str = Field(max_length=200)  # the line's "id", or its line number
    position: int  # 1-based line number in the source file
    input: Any = _json(nullable=False)
    expected: Any = _json()
    meta: dict[str, Any] | None = _json()
    assertions: list[dict[str, Any]] | None = _json()
    tools: list[dict[str, Any]] | None = _json()  # tool schemas offered to a model target


# --- experiments ----------------------------------------------------------------------


# What a user asks for when starting an offline run.
class ExperimentBase(SQLModel):
    name: str = Field(max_length=200)
    model: str = Field(max_length=200)
    # A Python callable target ("package.module:function"); None: the model is the target.
    target: str | None = Field(default=None, max_length=300)
    api_base: str | None = Field(default=None, max_length=1000)
    prompt_template: str | None = None
    model_params: dict[str, Any] | None = _json()
    # Resolved scorer specs: [{"label", "type", "version", "params"}], replayable.
    scorers: list[dict[str, Any]] | None = _json()
    repeats: int = 1


# One offline run: dataset version x target config x scorers x repeats.
class Experiment(ExperimentBase, table=True):
    id: int | None = Field(default=None, primary_key=True)
    dataset_id: int = Field(foreign_key="dataset.id", index=True)
    mode: str = Field(default="embedded", max_length=20)
    status: str = Field(default=ExperimentStatus.PENDING, max_length=20, index=True)
    total_items: int = 0  # items x repeats
    n_done: int = 0  # Results with an output
    n_failed: int = 0  # Results with a permanent error
    cost_usd: float = 0.0  # target calls, set at finalization
    judge_cost_usd: float = 0.0  # scorer (judge) calls, set at finalization
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    # Bumped when scorers are added (rescore): workers reload a cached plan that is older.
    config_version: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    # Response cache: "auto" (on for temperature-0 calls), "on", or "off".
    cache_mode: str = Field(default="auto", max_length=10,
                            sa_column_kwargs={"server_default": "auto"})
    max_cost_usd: float | None = None  # budget: no new model call once spent cost reaches it
    # Items evaluated at once when the run was enqueued: EVALQ_CONCURRENCY (embedded), the
    # live workers' summed concurrency from their heartbeats (distributed); None: unknown.
    concurrency: int | None = None
    created_at: datetime = _ts()
    # The first start, never restamped: the experiment's span is first_started_at to
    # finished_at. started_at is the last (re)start (a resume or rerun stamps it again).
    first_started_at: datetime | None = Field(default=None, sa_type=UTCDateTime())
    started_at: datetime | None = Field(default=None, sa_type=UTCDateTime())
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime())


# What a target produced for one (item, repeat), or why it failed: the one definition of
# these fields, shared by the Result row, its create model, the response cache and reports.
class TargetOutput(SQLModel):
    output: str | None = None
    tool_calls: list[dict[str, Any]] | None = _json()
    outcome: str | None = Field(default=None, max_length=50)  # an agent's final state
    steps: list[Any] | None = _json()  # an agent's steps, as its target reported them
    error: str | None = None
    error_type: str | None = Field(default=None, max_length=200)
    latency_ms: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    cost_known: bool = True  # False when litellm has no price for the model
    attempts: int = 0
    response_model: str | None = Field(default=None, max_length=200)
    # Replayed from the response cache: no provider call.
    cached: bool = Field(default=False, sa_column_kwargs={"server_default": sa.false()})

    # The fields the response cache stores and replays (not the call's own cost/attempts).
    CACHED_FIELDS: ClassVar[tuple[str, ...]] = (
        "output", "tool_calls", "prompt_tokens", "completion_tokens", "cost_known",
        "response_model", "outcome", "latency_ms")


# A Result as a task writes it: the (experiment, item, repeat) key, a status and the output.
class ResultCreate(TargetOutput):
    experiment_id: int = Field(foreign_key="experiment.id", index=True)
    item_id: int = Field(foreign_key="dataset_item.id")
    repeat: int = 0
    status: str = Field(max_length=20)

    @classmethod
    def of(cls, experiment_id: int, item_id: int, repeat: int, output: TargetOutput,
           status: ResultStatus | None = None) -> ResultCreate:
        """The Result of `output`: OK, or ERROR when it carries an error (or `status`)."""
        if status is None:
            status = ResultStatus.ERROR if output.error else ResultStatus.OK
        return cls.model_construct(**output.model_dump(), experiment_id=experiment_id,
                                   item_id=item_id, repeat=repeat, status=status.value)


# One (item, repeat) of an experiment: what the target produced, or why it failed.
class Result(ResultCreate, table=True):
    __table_args__ = (
        sa.UniqueConstraint("experiment_id", "item_id", "repeat", name="uq_result_key"),
    )

    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


# What one scorer said about one subject: the Score's fields, before it is attached.
class ScoreBase(SQLModel):
    scorer: str = Field(max_length=200)  # the label: a name, or name + params hash
    scorer_version: str = Field(max_length=40)
    value: float | None = None  # in [0, 1]; None when the scorer could not score
    passed: bool | None = None
    explanation: str | None = None
    error: str | None = None  # "could not score" (distinct from scoring 0)
    meta: dict[str, Any] | None = _json()
    judge_model: str | None = Field(default=None, max_length=200)
    judge_cost_usd: float = 0.0
    judge_tokens: int = 0
    judge_latency_ms: float | None = None


# A Score as a task writes it: a verdict attached to its subject.
class ScoreCreate(ScoreBase):
    subject_type: str = Field(max_length=20)
    subject_id: int
    experiment_id: int | None = Field(default=None, foreign_key="experiment.id")
    # The online evaluator that scored a production run; 0 for offline scores.
    evaluator_id: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    # When the subject happened (the Result's or the run's time): online windows use it.
    subject_at: datetime | None = Field(default=None, sa_type=UTCDateTime())

    @classmethod
    def of(cls, verdict: ScoreBase, *, subject_type: SubjectType, subject_id: int,
           experiment_id: int | None = None, evaluator_id: int = 0,
           subject_at: datetime | None = None) -> ScoreCreate:
        """`verdict` attached to its subject."""
        return cls.model_construct(**verdict.model_dump(), subject_type=subject_type.value,
                                   subject_id=subject_id, experiment_id=experiment_id,
                                   evaluator_id=evaluator_id, subject_at=subject_at)


# One scorer's verdict on one subject (an offline Result or a production run).
class Score(ScoreCreate, table=True):
    __table_args__ = (
        sa.UniqueConstraint(
            "subject_type", "subject_id", "evaluator_id", "scorer", "scorer_version",
            name="uq_score_key",
        ),
        sa.Index("ix_score_experiment_scorer", "experiment_id", "scorer"),
        sa.Index("ix_score_evaluator_subject_at", "evaluator_id", "subject_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = _ts()


# --- online evals ---------------------------------------------------------------------


class ClaimStatus(StrEnum):
    """State of one (online evaluator, production run) pair."""

    CLAIMED = "claimed"  # sampled and enqueued; a worker will score it
    DONE = "done"  # scored (every scorer of the evaluator has a Score)


# A production run as ingestion writes it: an LLM call, or an agent's plan and plan run.
class ProductionRunCreate(SQLModel):
    source: str = Field(max_length=200)  # the producing service or app
    external_id: str = Field(max_length=200)  # the producer's own run id
    created_at: datetime = _ts()  # when the run happened (the producer's clock)
    input: Any = _json()
    output: Any = _json()
    plan: Any = _json()  # e.g. a Portia plan: {"steps": [{"task", "tool_id", ...}]}
    steps: list[Any] | None = _json()  # what ran: plan run step outputs or a trace
    tool_calls: list[dict[str, Any]] | None = _json()
    status: str | None = Field(default=None, max_length=50)  # e.g. COMPLETE, FAILED
    latency_ms: float | None = None
    model: str | None = Field(default=None, max_length=200)
    cost_usd: float | None = None
    meta: dict[str, Any] | None = _json()  # user, tags, environment...


# One ingested production run.
class ProductionRun(ProductionRunCreate, table=True):
    __tablename__ = "production_run"
    __table_args__ = (
        sa.UniqueConstraint("source", "external_id", name="uq_run_source_external_id"),
        sa.Index("ix_production_run_created_at", "created_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    ingested_at: datetime = _ts()


# An online scoring rule ("stream"): which runs, how many, how often, with what scorers.
class OnlineEvaluator(SQLModel, table=True):
    __tablename__ = "online_evaluator"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=200, sa_column_kwargs={"unique": True})
    scorers: list[dict[str, Any]] | None = _json()  # resolved specs, like Experiment.scorers
    sample_rate: float = 1.0
    every_s: int = 60
    batch_size: int = 200
    filters: dict[str, Any] | None = _json()  # key=value on source, status, model, metadata
    since: datetime = _ts()  # only runs created at or after this are scored
    enabled: bool = True
    watermark: int = 0  # highest ProductionRun.id already examined
    next_due_at: datetime = _ts()
    last_tick_at: datetime | None = Field(default=None, sa_type=UTCDateTime())
    alert_threshold: float | None = None  # alert when a window's mean falls below it
    alert_window_s: int = 3600
    webhook_url: str | None = Field(default=None, max_length=1000)
    created_at: datetime = _ts()


# One sampled (evaluator, run) pair: claimed atomically, scored once.
class OnlineClaim(SQLModel, table=True):
    __tablename__ = "online_claim"
    __table_args__ = (
        sa.UniqueConstraint("evaluator_id", "run_id", name="uq_claim_evaluator_run"),
        sa.Index("ix_online_claim_status_claimed_at", "status", "claimed_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    evaluator_id: int = Field(foreign_key="online_evaluator.id")
    run_id: int = Field(foreign_key="production_run.id")
    status: str = Field(default=ClaimStatus.CLAIMED, max_length=20)
    claimed_at: datetime = _ts()
    attempts: int = 1
    done_at: datetime | None = Field(default=None, sa_type=UTCDateTime())


# An alert that fired: at most one per (evaluator, scorer, window).
class OnlineAlert(SQLModel, table=True):
    __tablename__ = "online_alert"
    __table_args__ = (
        sa.UniqueConstraint("evaluator_id", "scorer", "window_start", name="uq_alert_window"),
    )

    id: int | None = Field(default=None, primary_key=True)
    evaluator_id: int = Field(foreign_key="online_evaluator.id")
    scorer: str = Field(max_length=200)
    window_start: datetime = Field(sa_type=UTCDateTime())
    mean: float
    threshold: float
    n: int
    delivered: bool = False  # the webhook answered 2xx
    error: str | None = None
    created_at: datetime = _ts()



# Score moments of one online evaluator's scorer over one minute of subject_at (the runs'
# own time), kept at score time so a report reads a row per minute instead of every Score.
# A claim's scores are added once, in the transaction that marks the claim done
# (workers/online/claimed_runs.py); a second scoring of the same claim adds nothing.
class ScoreRollup(SQLModel, table=True):
    __tablename__ = "score_rollup"

    evaluator_id: int = Field(
        primary_key=True,
        sa_column_args=[sa.ForeignKey("online_evaluator.id", ondelete="CASCADE")],
    )
    scorer: str = Field(primary_key=True, max_length=200)
    bucket: int = Field(primary_key=True, sa_type=sa.BigInteger())  # minute start, epoch s
    n: int = 0  # scored: value is not None
    n_unscored: int = 0  # value is None
    total: float = 0.0  # sum of values
    total_sq: float = 0.0  # sum of squared values
    n_passed: int = 0  # scored and passed

# A stored model response, reused by calls with the same model, messages, parameters and
# repeat index (embedded mode; distributed mode keeps the cache in Redis).
class ResponseCache(SQLModel, table=True):
    __tablename__ = "response_cache"

    key: str = Field(primary_key=True, max_length=64)  # sha256 of the request
    value: dict[str, Any] | None = _json()
    created_at: datetime = _ts()
