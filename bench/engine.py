"""Engine benchmark: prefix-cache reuse, batched same-model decoding, concurrency, and wall time
per kept token against one model alone. Prints markdown tables (medians of several runs).

    python bench/engine.py                 # the full table (~20-40 min on 2 CPU cores)
    python bench/engine.py --quick         # fewer tokens and runs, for a smoke check

Every run decodes a fixed amount of work: segments of exactly ``--segment`` tokens (no early
boundary), EOS ignored, loop/repeat stops off, so the naive and reuse paths do the same decode
and differ only in what they prefill. Naive and reuse runs are interleaved so that load from
other processes hits both alike.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ensemble_core.engine import run_ensemble  # noqa: E402
from ensemble_core.pool import ModelPool  # noqa: E402
from ensemble_core.result import EnsembleResult  # noqa: E402
from ensemble_core.spec import ChatMessage, EnsembleConfig, EnsembleSpec, GenerationRequest, ModelSpec  # noqa: E402

PROMPT = "Write a long, detailed essay about the history of the Roman Empire, from its founding to its fall."
SMOL_COOL = ModelSpec(path="bundled:smollm2", name="smollm2-t0.3", temperature=0.3)
SMOL_WARM = ModelSpec(path="bundled:smollm2", name="smollm2-t0.9", temperature=0.9)
GEMMA = ModelSpec(path="bundled:gemma3-270m", name="gemma3-270m", temperature=0.7)


def run(
    pool: ModelPool, members: list[ModelSpec], method: str, tokens: int, segment: int, **params: Any
) -> tuple[float, EnsembleResult]:
    aggregation = {
        "segment_tokens": segment,
        "segment_boundary": "none",
        "ignore_eos": True,
        "loop_max_ngram": 0,
        "max_repeat": 1000,
        **params,
    }
    if method == "reward_based" and "scorers" not in aggregation:
        aggregation["scorers"] = [{"type": "likelihood", "include_own": True}]
    config = EnsembleConfig(
        model_selection_method="all",
        ensemble_method=method,
        max_rounds=tokens // segment + 2,
        score_threshold=None,
        aggregation_params=aggregation,
    )
    request = GenerationRequest(
        messages=[ChatMessage(role="user", content=PROMPT)], max_tokens=tokens, seed=7
    )
    started, cpu_started = time.perf_counter(), time.process_time()
    result = run_ensemble(EnsembleSpec(model_specs=members), config, request, pool)
    result.trace["bench_cpu_s"] = time.process_time() - cpu_started
    return time.perf_counter() - started, result


def prefilled(result: EnsembleResult) -> int:
    return sum(u.prefilled for u in result.usage.per_model.values())


def median_runs(
    pool: ModelPool, runs: int, variants: dict[str, dict[str, Any]]
) -> dict[str, dict[str, float]]:
    """Run each variant ``runs`` times, interleaved; medians of wall time and counters."""
    samples: dict[str, list[tuple[float, EnsembleResult]]] = {k: [] for k in variants}
    for _ in range(runs):
        for name, kwargs in variants.items():
            samples[name].append(run(pool, **kwargs))
    out = {}
    for name, rows in samples.items():
        out[name] = {
            "wall": statistics.median(t for t, _ in rows),
            "wall_min": min(t for t, _ in rows),
            "cpu": statistics.median(r.trace["bench_cpu_s"] for _, r in rows),
            "prefilled": statistics.median(prefilled(r) for _, r in rows),
            "kept": statistics.median(r.usage.completion_tokens for _, r in rows),
        }
    return out


def reuse_table(pool: ModelPool, runs: int, tokens: int, long_tokens: int, segment: int) -> list[str]:
    members = [SMOL_COOL, SMOL_WARM, GEMMA]
    lines = [
        f"### Prefix-cache reuse (SmolLM2 x2 at T=0.3/0.9 + Gemma-3-270M, {segment}-token segments)",
        "",
        "| method | tokens | runs | prefilled naive | prefilled reuse | prefill ratio | wall naive (s) | wall reuse (s) | wall ratio | CPU ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = [("round_robin", tokens, runs), ("reward_based", tokens, runs), ("round_robin", long_tokens, 1)]
    for method, n, r in rows:
        common = {"members": members, "method": method, "tokens": n, "segment": segment}
        res = median_runs(pool, r, {"naive": {**common, "reuse_cache": False}, "reuse": common})
        nv, ru = res["naive"], res["reuse"]
        lines.append(
            f"| {method} | {n} | {r} | {nv['prefilled']:.0f} | {ru['prefilled']:.0f} | "
            f"{nv['prefilled'] / max(ru['prefilled'], 1):.1f}x | {nv['wall']:.1f} | {ru['wall']:.1f} | "
            f"{nv['wall'] / ru['wall']:.2f}x | {nv['cpu'] / ru['cpu']:.2f}x |"
        )
        print(lines[-1], flush=True)
    return lines


def decoding_table(pool: ModelPool, runs: int, tokens: int, segment: int) -> list[str]:
    lines = [
        f"### Decoding: batched same-model candidates and concurrent models (reward_based, {tokens} tokens)",
        "",
        "| members | variant | runs | wall (s) | CPU (s) | wall speed-up | CPU speed-up |",
        "|---|---|---|---|---|---|---|",
    ]
    base = {"method": "reward_based", "tokens": tokens, "segment": segment}
    same = median_runs(
        pool,
        runs,
        {
            "one batch": {**base, "members": [SMOL_COOL, SMOL_WARM]},
            "one by one": {**base, "members": [SMOL_COOL, SMOL_WARM], "batch_same_model": False},
        },
    )
    pair = median_runs(
        pool,
        runs,
        {
            "concurrent": {**base, "members": [SMOL_COOL, GEMMA]},
            "sequential": {**base, "members": [SMOL_COOL, GEMMA], "concurrent": False},
        },
    )
    for members, res, fast, slow in (
        ("SmolLM2 x2 (one set of weights)", same, "one batch", "one by one"),
        ("SmolLM2 + Gemma-3-270M", pair, "concurrent", "sequential"),
    ):
        for variant in (slow, fast):
            speed = res[slow]["wall"] / res[variant]["wall"]
            cpu_speed = res[slow]["cpu"] / res[variant]["cpu"]
            lines.append(
                f"| {members} | {variant} | {runs} | {res[variant]['wall']:.1f} | {res[variant]['cpu']:.1f} | "
                f"{speed:.2f}x | {cpu_speed:.2f}x |"
            )
            print(lines[-1], flush=True)
    return lines


def overhead_table(pool: ModelPool, runs: int, tokens: int, segment: int) -> list[str]:
    lines = [
        f"### Wall time per kept token against one model alone ({tokens} tokens)",
        "",
        "| configuration | runs | wall (s) | ms per kept token | vs SmolLM2 alone | vs its models alone | CPU vs its models alone |",
        "|---|---|---|---|---|---|---|",
    ]
    base = {"tokens": tokens, "segment": segment}
    variants = {
        "SmolLM2 alone": {**base, "members": [SMOL_COOL], "method": "round_robin"},
        "Gemma-3-270M alone": {**base, "members": [GEMMA], "method": "round_robin"},
        "round_robin, SmolLM2 x2": {**base, "members": [SMOL_COOL, SMOL_WARM], "method": "round_robin"},
        "progressive, SmolLM2 x2": {
            **base,
            "members": [SMOL_COOL, SMOL_WARM],
            "method": "progressive",
            "progressive_mode": "length",
            "length_thresholds": [tokens // 2],
        },
        "reward_based, SmolLM2 x2 (same base)": {
            **base,
            "members": [SMOL_COOL, SMOL_WARM],
            "method": "reward_based",
        },
        "reward_based, SmolLM2 + Gemma": {**base, "members": [SMOL_COOL, GEMMA], "method": "reward_based"},
    }
    res = median_runs(pool, runs, variants)

    def alone(key: str, name: str) -> float:
        smol = res["SmolLM2 alone"][key] / res["SmolLM2 alone"]["kept"]
        gemma = res["Gemma-3-270M alone"][key] / res["Gemma-3-270M alone"]["kept"]
        if "Gemma" in name and "SmolLM2" in name:
            return (smol + gemma) / 2
        return gemma if "Gemma" in name else smol

    smol_wall = res["SmolLM2 alone"]["wall"] / res["SmolLM2 alone"]["kept"]
    for name, row in res.items():
        per_token = row["wall"] / row["kept"]
        cpu_per_token = row["cpu"] / row["kept"]
        lines.append(
            f"| {name} | {runs} | {row['wall']:.1f} | {per_token * 1000:.0f} | {per_token / smol_wall:.2f}x | "
            f"{per_token / alone('wall', name):.2f}x | {cpu_per_token / alone('cpu', name):.2f}x |"
        )
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--long-tokens", type=int, default=1024)
    parser.add_argument("--segment", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="64 tokens, 1 run, 128-token long row")
    parser.add_argument("--only", choices=["reuse", "decoding", "overhead", "levels"], action="append")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.tokens, args.long_tokens = 1, 64, 128
    import torch

    pool = ModelPool()
    for spec in (SMOL_COOL, GEMMA):  # load outside the timings
        pool.generator(spec)
    print(f"torch threads: {torch.get_num_threads()}; loaded: {pool.loaded()}", flush=True)
    sections = args.only or ["reuse", "decoding", "overhead", "levels"]
    out: list[str] = []
    if "reuse" in sections:
        out += reuse_table(pool, args.runs, args.tokens, args.long_tokens, args.segment) + [""]
    if "decoding" in sections:
        out += decoding_table(pool, args.runs, args.tokens, args.segment) + [""]
    if "overhead" in sections:
        out += overhead_table(pool, args.runs, args.tokens, args.segment) + [""]
    if "levels" in sections:  # token and response level rows (bench/engine_levels.py)
        from bench.engine_levels import levels_table

        out += levels_table(pool, args.runs, args.tokens) + [""]
    print("\n" + "\n".join(out))


if __name__ == "__main__":
    main()
