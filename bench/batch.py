"""A batch job on SmolLM2: tokens per second with the worker batching across items, against
the same worker running one item at a time.

    python bench/batch.py [--items 64] [--solo-items 12] [--max-tokens 48] [--configs single,ensemble]

Both runs go through the whole service (``POST /v1/ensemble/batch``, Redis, one Celery worker
process, Postgres) and time the batch from submission until its last item is final. The only
difference is ``ENSEMBLEHUB_CONCURRENCY``: 1 (one item at a time) or the number of items (every
item runs at once and the worker's ``DecodeBatcher`` shares their decode steps). The
one-at-a-time run takes fewer items: its tokens per second do not depend on the count.

Configs: ``single`` is SmolLM2 alone (round by round); ``ensemble`` is the bundled default
(two SmolLM2 members at temperatures 0.3 and 0.9, reward_based with the likelihood and MiniLM
relevance scorers), where each item decodes two candidates per round.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stack import print_table, running_stack  # noqa: E402

SMOLLM2 = [{"path": "bundled:smollm2", "name": "smollm2", "temperature": 0.7}]
CONFIGS: dict[str, tuple[list[dict] | None, list[str]]] = {
    "single": (SMOLLM2, ["--model_selection_method", "all", "--ensemble_method", "loop"]),
    "ensemble": (None, []),  # the bundled default
}
TOPICS = ["the sea", "bread", "a river", "the moon", "winter", "a library", "bees", "trains"]


def run_batch(config: str, items: int, concurrency: int, max_tokens: int) -> dict[str, float]:
    specs, flags = CONFIGS[config]
    env = {"ENSEMBLEHUB_CONCURRENCY": str(concurrency)}
    with (
        running_stack(specs, flags, worker_env=env) as stack,
        httpx.Client(base_url=stack.base_url, timeout=600) as client,
    ):
        # warm the worker (models loaded, first forward passes done) outside the timing
        warm = client.post(
            "/v1/chat/completions",
            json={"model": "ensemble", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
        )
        warm.raise_for_status()
        examples = [
            {"input": f"Write two sentences about {TOPICS[i % len(TOPICS)]} (note {i})."}
            for i in range(items)
        ]
        started = time.perf_counter()
        resp = client.post(
            "/v1/ensemble/batch", json={"examples": examples, "max_tokens": max_tokens, "seed": 1}
        )
        resp.raise_for_status()
        batch_id = resp.json()["id"]
        while True:
            view = client.get(f"/v1/ensemble/batch/{batch_id}").json()
            if view["status"] in ("completed", "failed", "cancelled"):
                break
            time.sleep(0.25)
        wall = time.perf_counter() - started
        page = client.get(f"/v1/ensemble/batch/{batch_id}/results", params={"limit": 1000}).json()
    results = [item["result"] for item in page["data"] if item["result"]]
    tokens = sum(r["usage"]["completion_tokens"] for r in results)
    return {
        "items": items,
        "succeeded": len(results),
        "tokens": tokens,
        "wall_s": wall,
        "tok_per_s": tokens / wall,
        "tokens_per_item": statistics.mean(r["usage"]["completion_tokens"] for r in results)
        if results
        else 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--solo-items", type=int, default=12)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--configs", default="single,ensemble")
    args = parser.parse_args()
    rows = []
    for config in args.configs.split(","):
        solo = run_batch(config, args.solo_items, 1, args.max_tokens)
        batched = run_batch(config, args.items, args.items, args.max_tokens)
        for label, r in (("one at a time", solo), (f"batched ({args.items} at once)", batched)):
            rows.append(
                [config, label, r["items"], r["succeeded"], r["tokens"], r["wall_s"], r["tok_per_s"], ""]
            )
        rows[-1][-1] = f"{batched['tok_per_s'] / solo['tok_per_s']:.2f}x"
    print(f"\nBatch job on SmolLM2, max_tokens {args.max_tokens}, one worker process (2 cores)\n")
    print_table(["config", "worker", "items", "ok", "tokens", "wall s", "tokens/s", "speed-up"], rows)


if __name__ == "__main__":
    main()
