"""Fail fast: the rule that stops an experiment whose first results all fail the same
permanent way, on its own and on SQLite and PostgreSQL through the stored Results."""

from __future__ import annotations

import pytest

from models.crud import record_outcomes
from models.db import session_scope
from models.tables import Experiment, ExperimentStatus, ResultCreate, ScoreBase
from tests.factories import make_experiment, result_in
from tests.support import EnvPatch
from workers.offline.failfast import after_chunk, experiment_stopped, stop_reason

AUTH = "litellm.AuthenticationError: AuthenticationError: OpenAIException - Incorrect API key"
BAD = "litellm.BadRequestError: OpenAIException - Invalid 'temperature': must be <= 2"


def _err(error_type: str | None = "AuthenticationError", error: str | None = AUTH
         ) -> tuple[str, str | None, str | None]:
    return ("error", error_type, error)


OK = ("ok", None, None)


# --- the rule -------------------------------------------------------------------------


def test_same_configuration_error_on_the_first_n_stops():
    reason = stop_reason([_err()] * 10, 10)
    assert reason is not None
    assert "first 10 results failed with AuthenticationError" in reason and AUTH in reason


def test_configuration_errors_need_not_share_their_message():
    # Providers put a request id in the message: the type is what matters for a key.
    first = [_err(error=f"{AUTH} (request req_{i})") for i in range(10)]
    assert stop_reason(first, 10) is not None
    assert stop_reason([_err("NotFoundError", "no such model")] * 5, 5) is not None
    assert stop_reason([_err("PermissionDeniedError", "no access")] * 5, 5) is not None


def test_request_errors_must_share_their_message():
    assert stop_reason([_err("BadRequestError", BAD)] * 10, 10) is not None
    varied = [_err("BadRequestError", f"{BAD} (item {i})") for i in range(10)]
    assert stop_reason(varied, 10) is None


@pytest.mark.parametrize("first", [
    [_err()] * 9,  # fewer than N results: too early to tell
    [OK] + [_err()] * 9,  # one item passed
    [_err()] * 9 + [OK],
    [_err()] * 5 + [_err("BadRequestError", BAD)] * 5,  # not the same way
    [_err("RateLimitError", "Rate limit reached.")] * 10,  # transient, retries ran out
    [_err("InternalServerError", "The server had an error.")] * 10,
    [_err("TargetError", "boom")] * 10,  # a callable target's own failure
    [("skipped_budget", "BudgetExceeded", "skipped")] * 10,
])
def test_no_stop(first: list[tuple[str, str | None, str | None]]):
    assert stop_reason(first, 10) is None


def test_zero_turns_it_off():
    assert stop_reason([_err()] * 10, 0) is None


def test_the_reason_is_redacted(monkeypatch: pytest.MonkeyPatch):
    secret = "sk-evalq-failfast-secret-0123456789"
    monkeypatch.setenv("EVALQ_FAILFAST_TEST_API_KEY", secret)
    reason = stop_reason([_err(error=f"Incorrect API key provided: {secret}")] * 3, 3)
    assert reason is not None and secret not in reason and "***" in reason


# --- through the database -------------------------------------------------------------


def _store(experiment_id: int, item_ids: list[int], *, ok: set[int] | None = None,
           error_type: str = "AuthenticationError", error: str = AUTH) -> None:
    rows: list[tuple[ResultCreate, list[ScoreBase]]] = []
    for item_id in item_ids:
        good = item_id in (ok or set())
        row = (result_in(experiment_id, item_id) if good else
               result_in(experiment_id, item_id, ok=False, error_type=error_type, error=error))
        rows.append((row, []))
    with session_scope() as session:
        record_outcomes(session=session, experiment_id=experiment_id, outcomes=rows)


def _experiment(experiment_id: int) -> Experiment:
    with session_scope() as session:
        exp = session.get(Experiment, experiment_id)
        assert exp is not None
        session.expunge(exp)
        return exp


def test_first_chunk_of_auth_errors_fails_the_experiment(db_url: str):
    exp_id, items = make_experiment(50, name="ff-auth")
    _store(exp_id, items[:16])
    assert not experiment_stopped(exp_id)
    after_chunk(exp_id)
    exp = _experiment(exp_id)
    assert exp.status == ExperimentStatus.FAILED
    assert exp.error is not None and AUTH in exp.error
    assert exp.finished_at is not None
    assert experiment_stopped(exp_id)
    # A chunk already in flight stores its errors: the stop stands.
    _store(exp_id, items[16:32])
    after_chunk(exp_id)
    assert _experiment(exp_id).status == ExperimentStatus.FAILED


def test_one_ok_result_keeps_the_experiment_running(db_url: str):
    exp_id, items = make_experiment(50, name="ff-mixed")
    _store(exp_id, items[:16], ok={items[3]})
    after_chunk(exp_id)
    _store(exp_id, items[16:32])  # later chunks all fail: still one OK among them
    after_chunk(exp_id)
    assert _experiment(exp_id).status == ExperimentStatus.RUNNING
    assert not experiment_stopped(exp_id)


def test_fewer_errors_than_the_threshold_do_not_stop(db_url: str):
    exp_id, items = make_experiment(50, name="ff-few")
    _store(exp_id, items[:9])
    after_chunk(exp_id)
    assert _experiment(exp_id).status == ExperimentStatus.RUNNING


def test_a_small_experiment_that_completed_all_failed_is_marked_failed(db_url: str):
    # The last chunk completes the experiment before after_chunk runs.
    exp_id, items = make_experiment(12, name="ff-small")
    _store(exp_id, items)
    assert _experiment(exp_id).status == ExperimentStatus.COMPLETED
    after_chunk(exp_id)
    assert _experiment(exp_id).status == ExperimentStatus.FAILED


def test_the_threshold_is_a_setting(db_url: str):
    exp_id, items = make_experiment(50, name="ff-setting")
    _store(exp_id, items[:16])
    with EnvPatch(EVALQ_FAIL_FAST_AFTER="0"):
        after_chunk(exp_id)
        assert _experiment(exp_id).status == ExperimentStatus.RUNNING
    with EnvPatch(EVALQ_FAIL_FAST_AFTER="20"):
        after_chunk(exp_id)
        assert _experiment(exp_id).status == ExperimentStatus.RUNNING
    with EnvPatch(EVALQ_FAIL_FAST_AFTER="3"):
        after_chunk(exp_id)
        assert _experiment(exp_id).status == ExperimentStatus.FAILED


# --- what `evalq run` tells the user --------------------------------------------------


@pytest.mark.parametrize(("error", "advice"), [
    ("AuthenticationError: litellm.InternalServerError: OpenAIException - Missing "
     "credentials. Please pass an `api_key`, or set the `OPENAI_API_KEY` environment "
     "variable.", "set OPENAI_API_KEY in the environment"),
    ("AuthenticationError: litellm.AuthenticationError: Missing Anthropic API Key - set "
     "`ANTHROPIC_API_KEY`", "set ANTHROPIC_API_KEY in the environment"),
    (f"AuthenticationError: {AUTH}", "the provider refused the API key"),
    ("PermissionDeniedError: litellm.APIError: forbidden", "the key may not use this model"),
    ("NotFoundError: The model does not exist.", "check --model"),
    (f"BadRequestError: {BAD}", "check --param values"),
    ("RateLimitError: Rate limit reached.", "`evalq rerun 7 --failed`"),
])
def test_next_step(error: str, advice: str):
    from scheduler.cli.experiments import next_step

    assert advice in next_step(error, 7)
