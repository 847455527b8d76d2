"""LLM-judge and embedding scorers through litellm's real HTTP client and the fake server:
JSON answers, one re-ask, could-not-score, retries, position swapping, cached G-Eval steps."""

from __future__ import annotations

import asyncio
import inspect
import json
import math
from collections.abc import Iterator
from typing import Any

import pytest

from bench.fakellm import FakeLLM
from models.settings import reset_settings
from workers.errors import ScorerConfigError, ScorerError
from workers.scorers import ResolvedScorer, Sample, ScoreValue, resolve_scorers
from workers.scorers.judges import json_object
from workers.scorers.semantic import cosine

JUDGE = "openai/judge-model"
SAMPLE = Sample(input="What is the capital of France?", expected="Paris",
                output="The capital of France is Paris.")


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Short backoffs, so a retried 429 costs milliseconds."""
    monkeypatch.setenv("EVALQ_RETRY_INITIAL_S", "0.01")
    monkeypatch.setenv("EVALQ_RETRY_MAX_S", "0.05")
    reset_settings()
    yield
    reset_settings()


def scorer(fake: FakeLLM, spec: dict[str, Any]) -> ResolvedScorer:
    return resolve_scorers([{"model": JUDGE, "api_base": fake.base_url, **spec}])[0]


async def score_async(resolved: ResolvedScorer, sample: Sample = SAMPLE) -> ScoreValue:
    verdict = resolved.fn(sample)
    if inspect.isawaitable(verdict):
        verdict = await verdict
    assert isinstance(verdict, ScoreValue)
    return verdict


def run(resolved: ResolvedScorer, sample: Sample = SAMPLE) -> ScoreValue:
    return asyncio.run(score_async(resolved, sample))


def reply(**answer: Any) -> dict[str, Any]:
    return {"reply": json.dumps(answer)}


def user_text(request: dict[str, Any], index: int = -1) -> str:
    users = [m["content"] for m in request["body"]["messages"] if m["role"] == "user"]
    return str(users[index])


RUBRIC = {"type": "llm_rubric", "criteria": "The answer names the right city."}


# --- llm_rubric and the shared judge conversation ------------------------------------------

@pytest.mark.parametrize(("raw", "value", "passed"), [(1, 0.0, False), (2, 0.25, False),
                                                      (3, 0.5, True), (5, 1.0, True)])
def test_rubric_scales_the_score(fake_llm: FakeLLM, raw: int, value: float, passed: bool):
    fake_llm.script([reply(reasoning="Names Paris correctly.", score=raw)])
    verdict = run(scorer(fake_llm, RUBRIC))
    assert (verdict.value, verdict.passed) == (value, passed)
    assert verdict.explanation == "Names Paris correctly."
    assert verdict.metadata is not None and verdict.metadata["score"] == raw
    assert verdict.judge_model == JUDGE and verdict.judge_tokens > 0
    assert verdict.judge_latency_ms is not None and verdict.judge_latency_ms > 0
    assert fake_llm.stats()["total"] == 1


def test_judge_requests_carry_deterministic_params_and_the_prompt(fake_llm: FakeLLM):
    fake_llm.script([reply(reasoning="ok", score=4)])
    run(scorer(fake_llm, RUBRIC))
    body = fake_llm.requests()[0]["body"]
    assert body["model"] == "judge-model"
    assert body["temperature"] == 0 and body["seed"] == 42
    assert body["response_format"] == {"type": "json_object"}
    prompt = user_text(fake_llm.requests()[0])
    for part in ("The answer names the right city.", SAMPLE.input, str(SAMPLE.output), '"score"'):
        assert part in prompt
    assert "<expected>" not in prompt


def test_params_override_the_defaults(fake_llm: FakeLLM):
    fake_llm.script([reply(reasoning="ok", score=4)])
    run(scorer(fake_llm, {**RUBRIC, "params": {"temperature": 0.2, "max_tokens": 300}}))
    body = fake_llm.requests()[0]["body"]
    assert body["temperature"] == 0.2 and body["max_tokens"] == 300 and body["seed"] == 42


def test_params_none_removes_a_default(fake_llm: FakeLLM):
    """For an OpenAI-compatible server that rejects seed/response_format: litellm treats the
    "openai/" provider as supporting both, so drop_params keeps them; None leaves them out."""
    fake_llm.script([reply(reasoning="ok", score=4)])
    run(scorer(fake_llm, {**RUBRIC, "params": {"seed": None, "response_format": None}}))
    body = fake_llm.requests()[0]["body"]
    assert "seed" not in body and "response_format" not in body and body["temperature"] == 0


def test_judge_model_and_base_default_to_settings(fake_llm: FakeLLM,
                                                  monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("EVALQ_JUDGE_MODEL", "openai/settings-judge")
    monkeypatch.setenv("EVALQ_JUDGE_API_BASE", fake_llm.base_url)
    reset_settings()
    fake_llm.script([reply(reasoning="ok", score=5)])
    verdict = run(resolve_scorers([RUBRIC])[0])
    assert verdict.judge_model == "openai/settings-judge"
    assert fake_llm.requests()[0]["body"]["model"] == "settings-judge"


def test_rubric_include_expected(fake_llm: FakeLLM):
    fake_llm.script([reply(reasoning="ok", score=5)])
    run(scorer(fake_llm, {**RUBRIC, "include_expected": True}))
    assert "<expected>\nParis\n</expected>" in user_text(fake_llm.requests()[0])
    with pytest.raises(ScorerError, match="no \"expected\""):
        run(scorer(fake_llm, {**RUBRIC, "include_expected": True}),
            Sample(input="q", expected=None, output="a"))


def test_fenced_answer_with_text_around_is_accepted(fake_llm: FakeLLM):
    fake_llm.script([{"reply": 'Here is my verdict:\n```json\n{"reasoning": "fine", '
                               '"score": 4}\n```\nThanks.'}])
    assert run(scorer(fake_llm, RUBRIC)).value == 0.75
    assert fake_llm.stats()["total"] == 1


@pytest.mark.parametrize(("text", "expected"), [
    ('{"score": 3}', {"score": 3}),
    ('```\n{"score": 3}\n```', {"score": 3}),
    ('I think {"reasoning": "a {b}", "score": 2} is fair', {"reasoning": "a {b}", "score": 2}),
    ("Braces {not json} then {\"score\": 1}", {"score": 1}),
    ("[1, 2]", None), ("no json here", None), ("", None),
])
def test_json_object_extraction(text: str, expected: dict[str, Any] | None):
    assert json_object(text) == expected


def test_invalid_answer_is_reasked_once_then_accepted(fake_llm: FakeLLM):
    fake_llm.script([{"reply": "The answer is good, I give it 4."},
                     reply(reasoning="Correct city.", score=4)])
    verdict = run(scorer(fake_llm, RUBRIC))
    assert verdict.value == 0.75 and verdict.explanation == "Correct city."
    assert fake_llm.stats()["total"] == 2
    assert verdict.metadata is not None and verdict.metadata["judge_calls"] == 2
    second = fake_llm.requests()[1]["body"]["messages"]
    assert second[-2] == {"role": "assistant", "content": "The answer is good, I give it 4."}
    assert "could not be used: it is not a JSON object" in second[-1]["content"]
    assert '"score": <integer from 1 to 5>' in second[-1]["content"]


def test_invalid_twice_cannot_score(fake_llm: FakeLLM):
    fake_llm.script([{"reply": "four", "times": 2}, reply(reasoning="never asked", score=4)])
    with pytest.raises(ScorerError, match="unparseable after one re-ask"):
        run(scorer(fake_llm, RUBRIC))
    assert fake_llm.stats()["total"] == 2


def test_out_of_range_score_is_invalid(fake_llm: FakeLLM):
    fake_llm.script([reply(reasoning="great", score=9), reply(reasoning="great", score=5)])
    assert run(scorer(fake_llm, RUBRIC)).value == 1.0
    assert '"score" must be an integer from 1 to 5, got 9' in user_text(fake_llm.requests()[1])
    fake_llm.reset()
    fake_llm.script([reply(reasoning="x", score=9), reply(reasoning="x", score=3.5)])
    with pytest.raises(ScorerError, match="unparseable.*integer from 1 to 5, got 3.5"):
        run(scorer(fake_llm, RUBRIC))


def test_rate_limit_is_retried_by_call_model(fake_llm: FakeLLM):
    fake_llm.script([{"status": 429}, reply(reasoning="ok", score=5)])
    verdict = run(scorer(fake_llm, RUBRIC))
    assert verdict.value == 1.0
    assert fake_llm.stats()["total"] == 2


def test_bad_request_cannot_score(fake_llm: FakeLLM):
    fake_llm.script([{"status": 400, "message": "response_format is not supported"}])
    with pytest.raises(ScorerError, match="BadRequestError.*response_format is not supported"):
        run(scorer(fake_llm, RUBRIC))
    assert fake_llm.stats()["total"] == 1


def test_no_output_cannot_score(fake_llm: FakeLLM):
    with pytest.raises(ScorerError, match="no text output"):
        run(scorer(fake_llm, RUBRIC), Sample(input="q", expected="a", output=None))
    assert fake_llm.stats()["total"] == 0


@pytest.mark.parametrize("spec", [
    {"type": "llm_rubric", "criteria": " "},
    {**RUBRIC, "scale_min": 5, "scale_max": 5},
    {**RUBRIC, "scale_min": 1.5},
    {**RUBRIC, "pass_threshold": 3},
    {**RUBRIC, "params": {"model": "openai/other"}},
    {**RUBRIC, "params": "temperature=0"},
    {"type": "llm_pairwise", "criteria": ""},
    {"type": "g_eval", "criteria": "c", "steps": []},
    {"type": "g_eval", "criteria": "c", "scale_min": 3, "scale_max": 1},
    {"type": "embedding_similarity", "threshold": 2},
])
def test_bad_parameters_fail_at_bind(spec: dict[str, Any]):
    with pytest.raises(ScorerConfigError):
        resolve_scorers([spec])


# --- llm_correctness --------------------------------------------------------------------

@pytest.mark.parametrize(("verdict", "value", "passed"), [
    ("correct", 1.0, True), ("partially_correct", 0.5, False), ("incorrect", 0.0, False),
    (" Correct ", 1.0, True),
])
def test_correctness_verdicts(fake_llm: FakeLLM, verdict: str, value: float, passed: bool):
    fake_llm.script([reply(reasoning="Compared with Paris.", verdict=verdict)])
    score = run(scorer(fake_llm, {"type": "llm_correctness"}))
    assert (score.value, score.passed) == (value, passed)
    assert score.explanation == "Compared with Paris." and score.judge_tokens > 0
    assert "<reference>\nParis\n</reference>" in user_text(fake_llm.requests()[0])


def test_correctness_reference_param_and_invalid_verdict(fake_llm: FakeLLM):
    resolved = scorer(fake_llm, {"type": "llm_correctness", "value": "Paris, France"})
    assert not resolved.needs_expected
    assert scorer(fake_llm, {"type": "llm_correctness"}).needs_expected
    fake_llm.script([reply(reasoning="hm", verdict="mostly"),
                     reply(reasoning="right", verdict="correct")])
    assert run(resolved, Sample(input="q", expected=None, output="Paris")).value == 1.0
    assert "<reference>\nParis, France\n</reference>" in user_text(fake_llm.requests()[0], 0)
    assert '"verdict" must be one of "correct"' in user_text(fake_llm.requests()[1])


def test_correctness_without_reference_cannot_score(fake_llm: FakeLLM):
    with pytest.raises(ScorerError, match="no \"expected\""):
        run(scorer(fake_llm, {"type": "llm_correctness"}),
            Sample(input="q", expected=None, output="a"))
    assert fake_llm.stats()["total"] == 0


# --- llm_pairwise -----------------------------------------------------------------------

PAIRWISE = {"type": "llm_pairwise", "baseline": "Paris, I think."}


@pytest.mark.parametrize(("winners", "value", "outcome", "biased"), [
    (("A", "B"), 1.0, "win", False),    # the candidate wins in both positions
    (("B", "A"), 0.0, "loss", False),   # the baseline wins in both positions
    (("tie", "tie"), 0.5, "tie", False),  # a tie is not a win: it does not pass
    (("A", "A"), 0.5, "tie", True),     # position bias: position A always wins
    (("B", "B"), 0.5, "tie", True),     # position bias: position B always wins
    (("tie", "B"), 0.5, "tie", True),   # tie, then a win: the order changed the verdict
    (("A", "tie"), 0.5, "tie", True),
    (("tie", "A"), 0.5, "tie", True),   # tie, then a loss
])
def test_pairwise_swaps_positions_and_counts_disagreement_as_a_tie(
        fake_llm: FakeLLM, winners: tuple[str, str], value: float, outcome: str,
        biased: bool):
    fake_llm.script([reply(reasoning=f"call {n}", winner=w) for n, w in enumerate(winners)])
    verdict = run(scorer(fake_llm, PAIRWISE))
    assert verdict.value == value and verdict.passed is (outcome == "win")
    assert verdict.metadata is not None
    assert verdict.metadata["outcome"] == outcome
    assert verdict.metadata["position_biased"] is biased
    assert verdict.metadata["consistent"] is not biased
    assert (verdict.explanation or "").startswith("position-biased") is biased
    assert [v["winner"] for v in verdict.metadata["verdicts"]] == list(winners)
    assert verdict.metadata["baseline_source"] == "param"
    assert "call 0" in (verdict.explanation or "") and "call 1" in (verdict.explanation or "")
    first, second = (user_text(r) for r in fake_llm.requests())
    candidate = SAMPLE.output
    assert f"<response_a>\n{candidate}\n</response_a>" in first
    assert "<response_b>\nParis, I think.\n</response_b>" in first
    assert f"<response_b>\n{candidate}\n</response_b>" in second
    assert "<response_a>\nParis, I think.\n</response_a>" in second
    assert verdict.judge_tokens > 0 and fake_llm.stats()["total"] == 2


def test_pairwise_baseline_sources(fake_llm: FakeLLM):
    fake_llm.script([{**reply(reasoning="r", winner="tie"), "times": 4}])
    with_meta = Sample(input="q", expected="from expected", output="cand",
                       metadata={"baseline_output": "from metadata"})
    verdict = run(scorer(fake_llm, {"type": "llm_pairwise"}), with_meta)
    assert verdict.metadata is not None and verdict.metadata["baseline_source"] == "metadata"
    assert "from metadata" in user_text(fake_llm.requests()[0])
    verdict = run(scorer(fake_llm, {"type": "llm_pairwise"}), SAMPLE)
    assert verdict.metadata is not None and verdict.metadata["baseline_source"] == "expected"
    with pytest.raises(ScorerError, match="no baseline"):
        run(scorer(fake_llm, {"type": "llm_pairwise"}),
            Sample(input="q", expected=None, output="cand"))


# --- g_eval -----------------------------------------------------------------------------

GEVAL = {"type": "g_eval", "criteria": "Coherence: the answer is well structured."}
STEPS = ["Read the input.", "Check the answer's structure.", "Judge coherence."]


def test_g_eval_writes_steps_once_and_reuses_them(fake_llm: FakeLLM):
    fake_llm.script([{"reply": json.dumps({"steps": STEPS})},
                     reply(reasoning="coherent", score=5), reply(reasoning="so-so", score=3)])
    resolved = scorer(fake_llm, GEVAL)
    first = run(resolved)
    second = run(resolved, Sample(input="q2", expected=None, output="answer two"))
    assert fake_llm.stats()["total"] == 3
    assert (first.value, first.explanation) == (1.0, "coherent")
    assert (second.value, second.passed) == (0.5, True)
    assert first.metadata is not None and first.metadata["steps_generated"] is True
    assert second.metadata is not None and second.metadata["steps_generated"] is False
    assert first.metadata["steps"] == second.metadata["steps"] == STEPS
    steps_request, score_1, score_2 = fake_llm.requests()
    assert '"steps"' in user_text(steps_request) and "3 to 5" in user_text(steps_request)
    numbered = "1. Read the input.\n2. Check the answer's structure.\n3. Judge coherence."
    assert numbered in user_text(score_1) and numbered in user_text(score_2)
    assert "answer two" in user_text(score_2)
    assert first.judge_tokens > second.judge_tokens > 0  # the steps call counts on sample 1


def test_g_eval_concurrent_samples_share_one_steps_call(fake_llm: FakeLLM):
    fake_llm.script([{"reply": json.dumps({"steps": STEPS}), "match": "Write 3 to 5"},
                     {**reply(reasoning="ok", score=4), "times": 2}])
    resolved = scorer(fake_llm, GEVAL)

    async def both() -> list[ScoreValue]:
        return list(await asyncio.gather(score_async(resolved), score_async(resolved)))

    assert [v.value for v in asyncio.run(both())] == [0.75, 0.75]
    assert fake_llm.stats()["total"] == 3


def test_g_eval_given_steps_make_one_call(fake_llm: FakeLLM):
    fake_llm.script([reply(reasoning="fine", score=4)])
    verdict = run(scorer(fake_llm, {**GEVAL, "steps": STEPS}))
    assert verdict.value == 0.75 and fake_llm.stats()["total"] == 1
    assert "2. Check the answer's structure." in user_text(fake_llm.requests()[0])


def test_g_eval_failed_steps_are_not_cached(fake_llm: FakeLLM):
    fake_llm.script([{"reply": '{"steps": "just one string"}', "times": 2}])
    resolved = scorer(fake_llm, GEVAL)
    with pytest.raises(ScorerError, match="unparseable"):
        run(resolved)
    fake_llm.script([{"reply": json.dumps({"steps": STEPS})}, reply(reasoning="ok", score=1)])
    assert run(resolved).value == 0.0
    assert fake_llm.stats()["total"] == 4


# --- embedding_similarity ---------------------------------------------------------------

def embedding(fake: FakeLLM, **params: Any) -> ResolvedScorer:
    spec = {"type": "embedding_similarity", "model": "openai/embedder",
            "api_base": fake.base_url, **params}
    return resolve_scorers([spec])[0]


def test_cosine_on_hand_computed_vectors():
    assert cosine([1, 0], [0, 1]) == 0.0
    assert cosine([1, 1], [-2, -2]) == pytest.approx(-1.0)
    assert cosine([1, 2, 3], [4, 5, 6]) == pytest.approx(32 / math.sqrt(14 * 77))
    assert cosine([3, 4], [3, 4]) == pytest.approx(1.0)
    assert cosine([0, 0], [1, 2]) == 0.0
    with pytest.raises(ValueError, match="different lengths"):
        cosine([1.0], [1.0, 2.0])


def test_embedding_similarity_passes_similar_and_fails_unrelated(fake_llm: FakeLLM):
    resolved = embedding(fake_llm, value="the capital city of France is Paris")
    similar = run(resolved, Sample(input="q", expected=None,
                                   output="The capital of France is Paris"))
    assert similar.passed and similar.value == pytest.approx(0.943, abs=0.01)
    assert "cosine 0.943" in (similar.explanation or "")
    assert similar.judge_model == "openai/embedder" and similar.judge_tokens > 0
    assert fake_llm.requests()[0]["body"]["input"] == [
        "The capital of France is Paris", "the capital city of France is Paris"]
    unrelated = run(resolved, Sample(input="q", expected=None,
                                     output="Bananas grow on tall tropical plants"))
    assert unrelated.passed is False and unrelated.value < 0.4  # cosine 0.354


def test_embedding_similarity_best_reference_and_floor(fake_llm: FakeLLM):
    refs = Sample(input="q", expected=["dogs bark", "Paris is the capital of France"],
                  output="The capital of France is Paris")
    best = run(embedding(fake_llm), refs)
    assert best.value == pytest.approx(1.0) and best.passed
    assert "reference 2 of 2" in (best.explanation or "")
    opposite = run(embedding(fake_llm, value="quantum chromodynamics describes gluons"),
                   Sample(input="q", expected=None, output="The capital of France is Paris"))
    assert opposite.value == 0.0 and opposite.passed is False
    assert opposite.metadata is not None and opposite.metadata["cosines"][0] < 0


def test_embedding_similarity_errors_cannot_score(fake_llm: FakeLLM):
    missing = Sample(input="q", expected=None, output="text")
    with pytest.raises(ScorerError, match="no \"expected\""):
        run(embedding(fake_llm), missing)
    broken = resolve_scorers([{"type": "embedding_similarity", "model": "openai/embedder",
                               "api_base": fake_llm.root_url + "/missing"}])[0]
    with pytest.raises(ScorerError, match="NotFoundError"):
        run(broken, SAMPLE)
