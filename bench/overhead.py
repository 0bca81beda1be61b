"""Service overhead: latency of /v1/chat/completions through the whole path (HTTP, Postgres,
Redis, Celery worker, back) against the same generation called in-process.

    python bench/overhead.py [--requests 60] [--smollm-requests 10] [--skip-smollm]

Prints p50/p95/p99 per path and model, the difference (the service overhead), and resident
memory of the worker process and of each loaded model.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stack import print_table, running_stack, summary  # noqa: E402
from ensemble_core.engine import run_ensemble  # noqa: E402
from ensemble_core.pool import ModelPool  # noqa: E402
from ensemble_core.spec import ChatMessage, EnsembleConfig, EnsembleSpec, GenerationRequest, ModelSpec  # noqa: E402
from tests.tiny_models import build_tiny_model  # noqa: E402

CONFIG = {"model_selection_method": "all", "aggregation_method": "round_robin", "max_rounds": 4}
PROMPT = "What is 2+2?"


def rss_mb(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def in_process(spec_json: dict, max_tokens: int, n: int) -> tuple[list[float], float]:
    """Latencies (ms) of run_ensemble called directly, and the RSS the model load added (MB)."""
    spec = EnsembleSpec(model_specs=[ModelSpec.model_validate(spec_json)])
    config = EnsembleConfig.model_validate(CONFIG)
    request = GenerationRequest(
        messages=[ChatMessage(role="user", content=PROMPT)], max_tokens=max_tokens, temperature=0
    )
    pool = ModelPool()
    before = rss_mb()
    run_ensemble(spec, config, request, pool)  # load + warm up
    model_mb = rss_mb() - before
    times = []
    for _ in range(n):
        t = time.perf_counter()
        run_ensemble(spec, config, request, pool)
        times.append((time.perf_counter() - t) * 1000)
    return times, model_mb


def through_service(spec_json: dict, max_tokens: int, n: int) -> tuple[list[float], float, dict]:
    body = {
        "model": "ensemble",
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ensemble_config": CONFIG,
    }
    with running_stack([spec_json]) as stack, httpx.Client(base_url=stack.base_url, timeout=300) as client:
        for _ in range(3):  # model load + warm-up
            r = client.post("/v1/chat/completions", json=body)
            r.raise_for_status()
        times, splits = [], []
        for _ in range(n):
            t = time.perf_counter()
            r = client.post("/v1/chat/completions", json=body)
            times.append((time.perf_counter() - t) * 1000)
            r.raise_for_status()
            job = client.get(f"/v1/jobs/{r.json()['id']}").json()
            splits.append(job.get("timings", {}))
        worker_pid = int(client.get("/status").json()["workers"][0]["pid"])
        worker_mb = rss_mb(worker_pid)
    queue = [s.get("queue_wait_ms", 0.0) for s in splits]
    model = [s.get("model_ms", 0.0) for s in splits]
    # the worker's time around the model: from its claim to its final write, less the model
    around = [s.get("run_ms", 0.0) - s.get("model_ms", 0.0) for s in splits]
    # the rest of the request: the API before the job row's created_at (parse, checks,
    # subscribe), and from the final write until the client has the answer (done event, answer)
    outside = [t - s.get("total_ms", 0.0) for t, s in zip(times, splits, strict=True)]
    split = {
        "queue_wait_p50": summary(queue)["p50"],
        "model_p50": summary(model)["p50"],
        "around_p50": summary(around)["p50"],
        "outside_p50": summary(outside)["p50"],
    }
    return times, worker_mb, split


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--smollm-requests", type=int, default=10)
    parser.add_argument("--skip-smollm", action="store_true")
    args = parser.parse_args()
    tiny_dir = build_tiny_model(
        Path(tempfile.mkdtemp(prefix="ehub-bench-")) / "tiny-llama", arch="llama", vocab_seed=1
    )
    cases = [("tiny llama", {"path": str(tiny_dir), "name": "tiny"}, 8, args.requests)]
    if not args.skip_smollm:
        cases.append(
            ("SmolLM2-135M", {"path": "bundled:smollm2", "name": "smollm2"}, 8, args.smollm_requests)
        )
    rows, memory, splits = [], [], []
    for label, spec_json, max_tokens, n in cases:
        direct, model_mb = in_process(spec_json, max_tokens, n)
        served, worker_mb, split = through_service(spec_json, max_tokens, n)
        d, s = summary(direct), summary(served)
        rows.append([label, "in-process", n, d["p50"], d["p95"], d["p99"]])
        rows.append([label, "service", n, s["p50"], s["p95"], s["p99"]])
        rows.append([label, "overhead", n, s["p50"] - d["p50"], s["p95"] - d["p95"], s["p99"] - d["p99"]])
        memory.append([label, round(model_mb), round(worker_mb)])
        splits.append(
            [label, split["outside_p50"], split["queue_wait_p50"], split["around_p50"], split["model_p50"]]
        )
    print(f"\nService overhead ({os.cpu_count()} cores; max_tokens=8, sequential requests; ms)\n")
    print_table(["model", "path", "n", "p50", "p95", "p99"], rows)
    print("\nLatency split of a served request (p50, ms; from the job's timestamps)\n")
    print_table(
        [
            "model",
            "API before the insert + after the final write",
            "queue wait (created to claimed)",
            "worker around the model",
            "model time",
        ],
        splits,
    )
    print("\nResident memory (MB)\n")
    print_table(["model", "added by loading the model (in-process)", "worker process RSS"], memory)


if __name__ == "__main__":
    main()
