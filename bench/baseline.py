"""The baseline: one Python process calling litellm.acompletion through an asyncio
semaphore, with exact_match scoring in-process and nothing stored.

Run as a subprocess by bench.throughput; prints one JSON line with its measurements.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import time

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


async def run(n: int, concurrency: int, api_base: str, model: str) -> dict[str, float]:
    import litellm  # lazy: ~3 s to import, and it reads LITELLM_LOCAL_MODEL_COST_MAP (above)

    litellm.suppress_debug_info = True
    semaphore = asyncio.Semaphore(concurrency)
    correct = 0

    async def one(i: int) -> None:
        nonlocal correct
        async with semaphore:
            resp = await litellm.acompletion(
                model=model, api_base=api_base, num_retries=0,
                messages=[{"role": "user", "content": f"item {i}"}])
        output = resp.choices[0].message.content or ""
        correct += int(output.strip().casefold() == f"item {i}".casefold())

    await one(-1)  # warm-up: litellm's lazy imports, connection pool
    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {"items": n, "correct": correct, "wall_s": wall, "items_per_s": n / wall,
            "cpu_s": cpu, "cpu_ms_per_item": cpu / n * 1000,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--api-base", required=True)
    parser.add_argument("--model", default="openai/bench")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.n, args.concurrency, args.api_base, args.model))))


if __name__ == "__main__":
    main()
