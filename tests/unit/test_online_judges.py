"""The default online judges read the whole agent run and score it through a real judge
call (the fake model server)."""

from __future__ import annotations

import asyncio
import json

from bench.fakellm import FakeLLM
from models.tables import ProductionRun
from workers.scorers import resolve_scorers
from workers.scoring import run_sample


def test_plan_run_success_judges_the_plan_and_its_outcome(fake_llm: FakeLLM):
    run = ProductionRun(
        source="agent", external_id="pr-9", input="Book a table for two",
        output="Booked for 8pm", status="COMPLETE",
        plan={"steps": [{"task": "find restaurant", "tool_id": "search"},
                        {"task": "book", "tool_id": "booking"}]},
        steps=[{"task": "find restaurant", "output": "Luigi's"}],
        tool_calls=[{"name": "search", "arguments": {"q": "table for two"}}],
    )
    fake_llm.script([{"reply": json.dumps({"reasoning": "booked as asked", "score": 4})}])
    scorer = resolve_scorers([{"type": "plan_run_success", "model": "openai/judge",
                               "api_base": fake_llm.base_url}])[0]
    verdict = asyncio.run(scorer.fn(run_sample(run)))
    assert verdict.value == 0.75 and verdict.passed is True
    assert verdict.explanation == "booked as asked"
    prompt = json.dumps(fake_llm.requests()[0]["body"]["messages"])
    for fragment in ("Book a table for two", "booking", "Luigi", "COMPLETE", "Booked for 8pm",
                     "achieved what the query asked"):
        assert fragment in prompt, fragment
