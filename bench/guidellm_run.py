"""guidellm against the live stack: a short synchronous run per model, TTFT / ITL / throughput.

    python bench/guidellm_run.py --start                      # a fresh local stack, bundled models
    python bench/guidellm_run.py --target http://127.0.0.1:8000 --tokenizer <a member's folder>

For each model (``ensemble`` and each member of ``GET /v1/models``, or ``--model``) it runs
``guidellm run`` with the synchronous profile (one request at a time), synthetic prompts of
``--prompt-tokens`` tokens and ``--output-tokens`` output tokens (guidellm sends
``ignore_eos``, so every answer has that length), and prints the medians guidellm measured:
time to first token, inter-token latency, time per output token, request latency and output
tokens per second of one request. guidellm streams every request, so these are the
service's streaming figures (see README "Using the API": token-by-token where one writer
decides the text as it is decoded, reward_based segment by segment after a short first one).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stack import print_table, running_stack  # noqa: E402

METRICS = (
    ("TTFT ms", "time_to_first_token_ms"),
    ("ITL ms", "inter_token_latency_ms"),
    ("TPOT ms", "time_per_output_token_ms"),
    ("latency s", "request_latency"),
)


def guidellm_run(
    target: str, model: str, tokenizer: str, args: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    """One synchronous guidellm run; returns its benchmark (guidellm's JSON)."""
    report = workdir / f"guidellm-{model.replace('/', '_')}.json"
    argv = [
        sys.executable,
        "-m",
        "guidellm",
        "run",
        "--backend",
        f"kind=openai_http,target={target},model={model}",
        "--profile",
        "kind=synchronous",
        "--constraint",
        f"kind=max_requests,count={args.requests}",
        "--tokenizer",
        f"kind=huggingface_auto,model={tokenizer}",
        "--data",
        f"kind=synthetic_text,prompt_tokens={args.prompt_tokens},output_tokens={args.output_tokens}",
        "--output",
        f"kind=json,path={report}",
        "--disable-console-interactive",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=args.timeout, env=env, cwd=workdir)
    if done.returncode != 0:
        raise SystemExit(f"guidellm failed for {model}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return dict(json.loads(report.read_text())["benchmarks"][0])


def median(metrics: dict[str, Any], name: str) -> float:
    summary = (metrics.get(name) or {}).get("successful") or {}
    return float(summary.get("median", float("nan")))


def row(model: str, benchmark: dict[str, Any]) -> list[object]:
    metrics = benchmark["metrics"]
    totals = metrics["request_totals"]
    tpot = median(metrics, "time_per_output_token_ms")
    return [
        model,
        f"{totals['successful']}/{totals['successful'] + totals['errored'] + totals['incomplete']}",
        *(median(metrics, key) for _, key in METRICS),
        1000.0 / tpot if tpot == tpot and tpot > 0 else float("nan"),
        median(metrics, "output_token_count"),
    ]


def members(target: str) -> list[str]:
    listed = httpx.get(target + "/v1/models", timeout=30).json()["data"]
    return [m["id"] for m in listed]


def warm(target: str, model: str) -> None:
    """The first job of a fresh worker loads the weights: keep that out of the figures."""
    body = {"model": model, "prompt": "Hi", "max_tokens": 2, "timeout": 600}
    httpx.post(target + "/v1/completions", json=body, timeout=620).raise_for_status()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", help="a running stack's base URL (else --start)")
    parser.add_argument("--start", action="store_true", help="start a fresh local stack (bundled models)")
    parser.add_argument("--tokenizer", help="a tokenizer folder or hub id (default: the bundled SmolLM2)")
    parser.add_argument("--model", action="append", help="model(s) to run (default: all of /v1/models)")
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--output-tokens", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()
    if not args.target and not args.start:
        parser.error("give --target URL or --start")
    tokenizer = args.tokenizer
    if tokenizer is None:
        from ensemble_core.bundled import resolve_model_path

        tokenizer = str(resolve_model_path("bundled:smollm2"))
    with ExitStack() as stack:
        target = args.target or stack.enter_context(running_stack(None)).base_url
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ehub-guidellm-")))
        rows = []
        for model in args.model or members(target):
            warm(target, model)
            rows.append(row(model, guidellm_run(target, model, tokenizer, args, workdir)))
        print(
            f"guidellm synchronous, {args.requests} requests, {args.prompt_tokens} prompt / "
            f"{args.output_tokens} output tokens (medians)"
        )
        print_table(["model", "ok", *(h for h, _ in METRICS), "out tok/s", "out tokens"], rows)


if __name__ == "__main__":
    main()
