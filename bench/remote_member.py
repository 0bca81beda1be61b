"""What a member served elsewhere (``engine: openai``) costs per segment, against the same member
in-process: the way to spread one ensemble over machines (docs/scale_out.md).

    python bench/remote_member.py [--answers 8] [--segments 8] [--segment-tokens 16] [--smollm]

The same model answers the same prompt greedily, ``segments`` segments of ``segment_tokens``
tokens (``ignore_eos``), three ways:

- in-process: an ``hf`` member in this process (its KV cache is kept across segments);
- openai -> a plain server: an ``openai`` member against a minimal OpenAI-compatible
  ``/v1/completions`` server (a subprocess: FastAPI + the same HF backend, no queue, no
  database), so the figure is HTTP plus the remote re-reading the prompt every segment;
- openai -> Ensemble-Hub: an ``openai`` member against a whole Ensemble-Hub stack
  (API, Postgres, Redis, a Celery worker) serving that model as ``"model": "<member>"``.

Prints ms per segment (p50 over the answers) and the added cost over in-process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stack import print_table, running_stack, summary  # noqa: E402
from ensemble_core.engine import run_ensemble  # noqa: E402
from ensemble_core.pool import ModelPool  # noqa: E402
from ensemble_core.spec import EnsembleConfig, EnsembleSpec, GenerationRequest, ModelSpec  # noqa: E402
from tests import services  # noqa: E402
from tests.tiny_models import build_tiny_model  # noqa: E402

PROMPT = "The numbers from one to twenty are:"


def config(segment_tokens: int, segments: int) -> EnsembleConfig:
    return EnsembleConfig(
        model_selection_method="all",
        aggregation_method="round_robin",
        max_rounds=segments,
        max_repeat=1000,
        aggregation_params={"segment_tokens": segment_tokens, "min_segment_tokens": segment_tokens},
    )


def answer_ms(member: ModelSpec, args: argparse.Namespace, answers: int) -> tuple[list[float], str]:
    """ms per segment of each answer, and the last one's segments and tokens."""
    spec = EnsembleSpec(model_specs=[member])
    cfg = config(args.segment_tokens, args.segments)
    request = GenerationRequest(
        prompt=PROMPT, max_tokens=args.segment_tokens * args.segments, temperature=0, ignore_eos=True
    )
    pool = ModelPool()
    run_ensemble(spec, cfg, request, pool)  # load, warm up
    per_segment, shape = [], ""
    for _ in range(answers):
        started = time.perf_counter()
        result = run_ensemble(spec, cfg, request, pool)
        elapsed = (time.perf_counter() - started) * 1000
        segments = len(result.trace.get("rounds") or []) or 1
        per_segment.append(elapsed / segments)
        shape = f"{segments} / {result.usage.completion_tokens}"
    return per_segment, shape


# --- the minimal OpenAI-compatible server (run as `--serve PORT MODEL_JSON`) ---------------


def serve(port: int, member_json: str) -> None:
    import uvicorn
    from fastapi import FastAPI

    member = ModelSpec.model_validate_json(member_json)
    spec, pool, app = EnsembleSpec(model_specs=[member]), ModelPool(), FastAPI()

    @app.post("/v1/completions")
    def completions(body: dict) -> dict:  # type: ignore[type-arg]
        request = GenerationRequest(
            prompt=body["prompt"],
            max_tokens=int(body.get("max_tokens") or 16),
            temperature=0,
            ignore_eos=bool(body.get("ignore_eos", False)),
        )
        cfg = EnsembleConfig(
            model_selection_method="all",
            aggregation_method="round_robin",
            max_rounds=1,
            aggregation_params={"segment_tokens": request.max_tokens},
        )
        result = run_ensemble(spec, cfg, request, pool)
        usage = result.usage.model_dump(mode="json")
        return {
            "id": "cmpl-bench",
            "object": "text_completion",
            "model": member.display_name,
            "choices": [{"index": 0, "text": result.text, "finish_reason": result.finish_reason}],
            "usage": {k: usage.get(k, 0) for k in ("prompt_tokens", "completion_tokens", "total_tokens")},
        }

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def plain_server(member: ModelSpec) -> tuple[subprocess.Popen[bytes], str]:
    port = services.free_port()
    argv = [sys.executable, __file__, "--serve", str(port), member.model_dump_json()]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            httpx.get(base + "/docs", timeout=1)
            return proc, base
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise TimeoutError("the plain server did not start")


def remote(path: str, base_url: str, *, logprobs: bool) -> ModelSpec:
    options = {"base_url": base_url + "/v1", "prompt_format": "raw", "timeout_s": 300, "logprobs": logprobs}
    return ModelSpec(path=path, engine="openai", name="remote", engine_options=options)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--answers", type=int, default=8)
    parser.add_argument("--segments", type=int, default=8)
    parser.add_argument("--segment-tokens", type=int, default=16)
    parser.add_argument("--smollm", action="store_true", help="SmolLM2-135M instead of a tiny model")
    parser.add_argument("--serve", nargs=2, metavar=("PORT", "MEMBER_JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(int(args.serve[0]), args.serve[1])
        return
    os.environ.setdefault("ENSEMBLEHUB_OUTBOUND_ALLOWLIST", "127.0.0.1")
    if args.smollm:
        local, label = ModelSpec(path="bundled:smollm2", name="smollm2"), "SmolLM2-135M"
    else:
        tiny = build_tiny_model(Path(tempfile.mkdtemp(prefix="ehub-bench-")) / "tiny-llama", arch="llama")
        local, label = ModelSpec(path=str(tiny), name="tiny-llama"), "tiny llama"

    rows = []
    direct, segments = answer_ms(local, args, args.answers)
    base_p50 = summary(direct)["p50"]
    rows.append([label, "in-process (hf)", segments, base_p50, summary(direct)["p95"], 0.0])

    proc, base = plain_server(local)
    try:
        times, segments = answer_ms(remote(local.display_name, base, logprobs=False), args, args.answers)
    finally:
        proc.terminate()
        proc.wait()
    s = summary(times)
    rows.append([label, "openai -> plain server", segments, s["p50"], s["p95"], s["p50"] - base_p50])

    with running_stack([json.loads(local.model_dump_json())]) as stack:
        member = remote(local.display_name, stack.base_url, logprobs=True)
        times, segments = answer_ms(member, args, args.answers)
    s = summary(times)
    rows.append([label, "openai -> Ensemble-Hub", segments, s["p50"], s["p95"], s["p50"] - base_p50])

    print(
        f"\nOne member, {args.segments} segments of {args.segment_tokens} tokens per answer, greedy, "
        f"{args.answers} answers, sequential ({os.cpu_count()} cores; ms per segment)\n"
    )
    print_table(["model", "member", "segments / tokens", "p50", "p95", "added per segment (p50)"], rows)


if __name__ == "__main__":
    main()
