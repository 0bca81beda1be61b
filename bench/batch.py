"""A batch job on SmolLM2: tokens per second with the worker batching across items, against
the same worker running one item at a time.

    python bench/batch.py [--items 64] [--solo-items 12] [--max-tokens 48] [--configs single,pair,ensemble]
                          [--temperature 0] [--torch-dtype bfloat16] [--engine-option batch_step_threads=1]

Both runs go through the whole service (``POST /v1/ensemble/batch``, Redis, one Celery worker
process, Postgres) and time the batch from submission until its last item is final. The only
difference is ``ENSEMBLEHUB_CONCURRENCY``: 1 (one item at a time) or the number of items (every
item runs at once and the model's decode loop, ``hf_batching.DecodeLoop``, shares their decode
steps). The one-at-a-time run takes fewer items: its tokens per second do not depend on the
count. Its items are the batch's first ones (same text, same seed), and the last column counts
those whose output is the same text in both runs.

Configs: ``single`` is SmolLM2 alone (round by round); ``pair`` is the bundled default until
2026-12-02 (two SmolLM2 members at temperatures 0.3 and 0.9, reward_based with the likelihood
and MiniLM relevance scorers), where each item decodes two candidates per round; ``ensemble``
is today's bundled default (SmolLM2 chat and raw, Gemma-3-270M raw, one whole answer each,
best_of_n), whose Gemma 3 member (sliding-window attention) decodes on the direct path.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stack import print_table, running_stack  # noqa: E402

SMOLLM2 = [{"path": "bundled:smollm2", "name": "smollm2", "temperature": 0.7}]
# the bundled default until 2026-12-02 (3ebfc89), the "ensemble" of the issue-15 baseline
PAIR = [
    {"path": "bundled:smollm2", "name": "smollm2-t0.3", "temperature": 0.3},
    {"path": "bundled:smollm2", "name": "smollm2-t0.9", "temperature": 0.9},
]
PAIR_CONFIG = {
    "aggregation_level": "sentence",
    "max_rounds": 10,
    "score_threshold": None,
    "max_repeat": 3,
    "aggregation_params": {
        "scorers": [
            {"type": "likelihood", "weight": 0.7, "include_own": True},
            {"type": "embedding", "mode": "relevance", "weight": 0.3},
        ]
    },
}
# name: (model specs, server flags, the batch's ensemble_config)
CONFIGS: dict[str, tuple[list[dict] | None, list[str], dict[str, Any] | None]] = {
    "single": (SMOLLM2, ["--model_selection_method", "all", "--ensemble_method", "loop"], None),
    "pair": (PAIR, ["--model_selection_method", "all", "--ensemble_method", "reward_based"], PAIR_CONFIG),
    "ensemble": (None, [], None),  # the bundled default
}
TOPICS = ["the sea", "bread", "a river", "the moon", "winter", "a library", "bees", "trains"]


def run_batch(
    config: str,
    items: int,
    concurrency: int,
    max_tokens: int,
    temperature: float | None,
    torch_dtype: str | None = None,
    engine_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    specs, flags, overlay = CONFIGS[config]
    options = {**(engine_options or {}), **({"torch_dtype": torch_dtype} if torch_dtype else {})}
    if options:  # the admin's engine options, on every member of the config
        if specs is None:
            raise SystemExit("engine options apply to the configs with explicit members (single, pair)")
        specs = [{**s, "engine_options": {**s.get("engine_options", {}), **options}} for s in specs]
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
        body: dict[str, Any] = {"examples": examples, "max_tokens": max_tokens, "seed": 1}
        if temperature is not None:
            body["temperature"] = temperature
        if overlay is not None:
            body["ensemble_config"] = overlay
        resp = client.post("/v1/ensemble/batch", json=body)
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
    outputs = {item["index"]: item["result"]["output"] for item in page["data"] if item["result"]}
    tokens = sum(r["usage"]["completion_tokens"] for r in results)
    return {
        "items": items,
        "succeeded": len(results),
        "tokens": tokens,
        "wall_s": wall,
        "tok_per_s": tokens / wall,
        "outputs": outputs,
        "tokens_per_item": statistics.mean(r["usage"]["completion_tokens"] for r in results)
        if results
        else 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--solo-items", type=int, default=12)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--configs", default="single,pair")
    parser.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="the request's temperature (0: greedy); default the members'",
    )
    parser.add_argument(
        "--torch-dtype",
        default=None,
        help="the members' weight dtype (engine option torch_dtype: float32, bfloat16, auto); default theirs",
    )
    parser.add_argument(
        "--engine-option",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="an engine option for every member, e.g. batch_step_threads=1 (repeatable)",
    )
    args = parser.parse_args()
    engine_options = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.engine_option)}
    rows = []
    for config in args.configs.split(","):
        solo = run_batch(
            config, args.solo_items, 1, args.max_tokens, args.temperature, args.torch_dtype, engine_options
        )
        batched = run_batch(
            config,
            args.items,
            args.items,
            args.max_tokens,
            args.temperature,
            args.torch_dtype,
            engine_options,
        )
        # the one-at-a-time run's items are the batch's first items (same text, same seed)
        same = sum(batched["outputs"].get(i) == text for i, text in solo["outputs"].items())
        for label, r in (("one at a time", solo), (f"batched ({args.items} at once)", batched)):
            rows.append(
                [config, label, r["items"], r["succeeded"], r["tokens"], r["wall_s"], r["tok_per_s"], "", ""]
            )
        rows[-1][-2] = f"{batched['tok_per_s'] / solo['tok_per_s']:.2f}x"
        rows[-1][-1] = f"{same}/{len(solo['outputs'])}"
    temperature = "members' own" if args.temperature is None else args.temperature
    dtype = args.torch_dtype or "the members' own"
    print(
        f"\nBatch job on SmolLM2, max_tokens {args.max_tokens}, temperature {temperature}, seed 1, "
        f"weight dtype {dtype}, engine options {engine_options or 'the defaults'}, "
        "one worker process (2 cores)\n"
    )
    print_table(
        [
            "config",
            "worker",
            "items",
            "ok",
            "tokens",
            "wall s",
            "tokens/s",
            "speed-up",
            "same output as alone",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
