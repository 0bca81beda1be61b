"""Token- and response-level rows of the engine benchmark, side by side with one model alone.

    python bench/engine_levels.py               # 64 tokens, 1 run (a few minutes on 2 CPU cores)
    python bench/engine_levels.py --tokens 128 --runs 3
    python bench/engine.py --only levels        # the same table from the engine benchmark

Every run decodes a fixed amount of work (EOS ignored, loop stops off). Columns: wall time and
CPU time of this process (less sensitive to other processes on a shared machine), the tokens of
the answer, forward passes of all models per answer token (decode steps, catch-up
prefills and scoring passes; a model decoding a batch of candidates makes one pass per step),
and for token level how many steps were ensembled and how often the ensemble overruled the
leader (SmolLM2).
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

PROMPT = "Explain step by step how to compute 17 * 24, then give the final answer."
SMOL = ModelSpec(path="bundled:smollm2", name="smollm2")
GEMMA = ModelSpec(path="bundled:gemma3-270m", name="gemma3-270m")
FIXED_WORK = {"ignore_eos": True, "loop_max_ngram": 0}


def _config(level: str, method: str, params: dict[str, Any], tokens: int) -> EnsembleConfig:
    if level == "sentence":  # one model alone: one segment of the whole length
        params = {"segment_tokens": tokens, "segment_boundary": "none", "max_repeat": 1000, **params}
    return EnsembleConfig(
        model_selection_method="all",
        aggregation_level=level,  # type: ignore[arg-type]
        aggregation_method=method,
        score_threshold=None,
        aggregation_params={**FIXED_WORK, **params},
    )


ROWS: list[tuple[str, list[ModelSpec], str, str, dict[str, Any]]] = [
    ("SmolLM2 alone", [SMOL], "sentence", "round_robin", {}),
    ("Gemma-3-270M alone", [GEMMA], "sentence", "round_robin", {}),
    ("token gac, every token", [SMOL, GEMMA], "token", "gac", {}),
    (
        "token gac, uncertain steps (top-1 < 0.5)",
        [SMOL, GEMMA],
        "token",
        "gac",
        {"ensemble_steps": "uncertain"},
    ),
    ("response majority_vote, 2 answers", [SMOL, GEMMA], "response", "majority_vote", {}),
    (
        "response majority_vote, SmolLM2 x4 samples",
        [SMOL],
        "response",
        "majority_vote",
        {"samples_per_model": 4},
    ),
    ("response best_of_n (cross likelihood)", [SMOL, GEMMA], "response", "best_of_n", {}),
    ("response llm_blender (pairwise)", [SMOL, GEMMA], "response", "llm_blender", {}),
]


def run_row(
    pool: ModelPool, members: list[ModelSpec], level: str, method: str, params: dict[str, Any], tokens: int
) -> tuple[float, EnsembleResult]:
    temperature = 0.0 if level != "response" else 0.7
    request = GenerationRequest(
        messages=[ChatMessage(role="user", content=PROMPT)],
        max_tokens=tokens,
        temperature=temperature,
        seed=7,
    )
    started, cpu_started = time.perf_counter(), time.process_time()
    result = run_ensemble(
        EnsembleSpec(model_specs=members), _config(level, method, params, tokens), request, pool
    )
    result.trace["bench_cpu_s"] = time.process_time() - cpu_started
    return time.perf_counter() - started, result


def levels_table(pool: ModelPool, runs: int, tokens: int) -> list[str]:
    """The markdown table (medians of ``runs`` interleaved runs per row)."""
    lines = [
        f"### Token and response level against one model alone ({tokens} tokens, SmolLM2 + Gemma-3-270M)",
        "",
        "| configuration | runs | wall (s) | answer tokens | ms per answer token | vs SmolLM2 alone "
        "| CPU s | CPU vs SmolLM2 alone | forward passes per token | ensembled steps | overruled leader |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    samples: dict[str, list[tuple[float, EnsembleResult]]] = {row[0]: [] for row in ROWS}
    for _, members, level, method, params in ROWS:  # warm-up: first-call costs out of the timings
        run_row(pool, members, level, method, params, 4)
    for _ in range(runs):
        for name, members, level, method, params in ROWS:
            samples[name].append(run_row(pool, members, level, method, params, tokens))
    alone_ms: float | None = None
    alone_cpu: float | None = None
    for name, rows in samples.items():
        wall = statistics.median(t for t, _ in rows)
        cpu = statistics.median(r.trace["bench_cpu_s"] for _, r in rows)
        result = rows[len(rows) // 2][1]
        kept = max(result.usage.completion_tokens, 1)
        passes = sum(u.forward_passes for u in result.usage.per_model.values())
        per_token_ms = wall / kept * 1000
        alone_ms = alone_ms or per_token_ms
        alone_cpu = alone_cpu or cpu / kept
        summary = result.trace.get("summary", {})
        ensembled = (
            f"{summary['ensembled_steps']}/{summary['steps']}" if "ensembled_steps" in summary else "-"
        )
        overruled = f"{summary['disagreements']}" if "disagreements" in summary else "-"
        lines.append(
            f"| {name} | {runs} | {wall:.1f} | {kept} | {per_token_ms:.0f} | {per_token_ms / alone_ms:.2f}x "
            f"| {cpu:.1f} | {cpu / kept / alone_cpu:.2f}x | {passes / kept:.2f} | {ensembled} | {overruled} |"
        )
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    import torch

    pool = ModelPool()
    for spec in (SMOL, GEMMA):  # load outside the timings
        pool.generator(spec)
    print(f"torch threads: {torch.get_num_threads()}", flush=True)
    lines = levels_table(pool, args.runs, args.tokens)
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
