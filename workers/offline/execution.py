"""Running the target of one (item, repeat): render the prompt and call the model (through
the response cache when it applies), or call a Python callable target.

Returns a TargetOutput, never raises for a target's failure (it is recorded).
"""

from __future__ import annotations

import asyncio

from models.settings import Settings
from models.tables import TargetOutput
from workers.errors import WorkerError
from workers.llm.cache import cache_enabled, cache_key, store_for
from workers.llm.calls import call_model
from workers.offline.plan import Case, ExperimentPlan
from workers.offline.prompt import render_messages
from workers.offline.targets import call_target


async def run_target(plan: ExperimentPlan, case: Case, settings: Settings, repeat: int = 0
                     ) -> TargetOutput:
    """What the target produced for one test case (a model call, or a Python callable)."""
    if plan.target is not None:
        context = {"id": case.key, "input": case.input, "metadata": case.metadata,
                   "tools": list(case.tools) if case.tools else None}
        return await call_target(plan.target, case.input, context, settings)
    try:
        messages = render_messages(plan.template, case.input, case.metadata)
    except WorkerError as exc:
        return TargetOutput(error=str(exc), error_type=type(exc).__name__)
    params = dict(plan.params)
    if case.tools:
        params["tools"] = list(case.tools)
    if not cache_enabled(plan.cache_mode, params):
        return await call_model(model=plan.model, messages=messages, settings=settings,
                                api_base=plan.api_base, params=params)
    store = store_for(settings)
    key = cache_key(model=plan.model, api_base=plan.api_base, messages=messages,
                    params=params, repeat=repeat)
    hit = await asyncio.to_thread(store.get, key)
    if hit is not None:
        return TargetOutput(**{**hit, "cached": True, "cost_usd": 0.0, "attempts": 0})
    output = await call_model(model=plan.model, messages=messages, settings=settings,
                              api_base=plan.api_base, params=params)
    if output.error is None:
        await asyncio.to_thread(store.put, key, output.model_dump(
            include=set(TargetOutput.CACHED_FIELDS)))
    return output
