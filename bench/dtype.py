"""Weight dtype per machine: ms per decode step at 1, 8 and 64 rows, and greedy agreement.

    python bench/dtype.py                          # SmolLM2, float32 / bfloat16 (+ int8 rows with torchao)
    python bench/dtype.py --rows 1 8 64 --steps 16 --prompts 24 --tokens 32
    python bench/dtype.py --device cuda            # the same table on a GPU

Each dtype is loaded through the HF backend's own loader (``engine_options.torch_dtype``), so
the ``auto`` row is what ``torch_dtype: auto`` picks on this machine. The int8 rows (only when
torchao is installed) quantize the loaded model with torchao's ``Int8WeightOnlyConfig`` or
``Int8DynamicActivationInt8WeightConfig``: measured to decide, not offered by the loader.

* ms/step: prefill ``--rows`` identical 32-token prompts, then the median of ``--steps`` single-
  token decode steps with the KV cache (what one step of a batched decode costs), repeated
  ``--repeats`` times with the dtypes interleaved, the best repeat kept (others load the CPU).
* agreement: ``--prompts`` questions of the evaluation's dev split (chat template), each decoded
  greedily alone for ``--tokens`` tokens; a continuation agrees when every token equals
  float32's; "first divergence" is the median position of the first different token among the
  prompts that diverge.

One CPU thread by default (``--threads``), as the backend uses on a 2-core machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, DynamicCache  # noqa: E402

from ensemble_core.backends.hf_loading import (  # noqa: E402
    auto_dtype,
    cpu_flags,
    from_pretrained,
    load_tokenizer,
)
from ensemble_core.spec import ModelSpec  # noqa: E402
from evaluation.item_set import builtin_items  # noqa: E402
from evaluation.prompting import item_messages  # noqa: E402


def load(model: str, device: str, variant: str) -> Any:
    base, _, quant = variant.partition("+")
    spec = ModelSpec(path=model, device=device, engine_options={"torch_dtype": base, "cpu_threads": 64})
    loaded = from_pretrained(AutoModelForCausalLM, spec, None)
    if quant:
        from torchao.quantization import (
            Int8DynamicActivationInt8WeightConfig,
            Int8WeightOnlyConfig,
            quantize_,
        )

        config = Int8WeightOnlyConfig() if quant == "int8wo" else Int8DynamicActivationInt8WeightConfig()
        quantize_(loaded, config)
    return loaded


@torch.inference_mode()
def step_ms(model: Any, rows: int, steps: int) -> float:
    device = next(model.parameters()).device
    ids = torch.arange(100, 132, device=device).repeat(rows, 1)
    out = model(input_ids=ids, past_key_values=DynamicCache(), use_cache=True)
    token = out.logits[:, -1:].argmax(-1)
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        out = model(input_ids=token, past_key_values=out.past_key_values, use_cache=True)
        token = out.logits[:, -1:].argmax(-1)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


@torch.inference_mode()
def greedy(model: Any, prompt: list[int], tokens: int) -> list[int]:
    device = next(model.parameters()).device
    ids = torch.tensor([prompt], device=device)
    out = model(input_ids=ids, past_key_values=DynamicCache(), use_cache=True)
    produced: list[int] = []
    for _ in range(tokens):
        token = int(out.logits[0, -1].float().argmax())
        produced.append(token)
        ids = torch.tensor([[token]], device=device)
        out = model(input_ids=ids, past_key_values=out.past_key_values, use_cache=True)
    return produced


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="bundled:smollm2")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=20, help="0: timing only")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-int8", action="store_true", help="skip the torchao rows")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    variants = ["float32", "bfloat16"]
    if not args.no_int8:
        try:
            import torchao  # noqa: F401
        except ImportError as exc:
            print(f"(no int8 rows: torchao is not importable: {exc})")
        else:
            variants += ["float32+int8wo", "bfloat16+int8wo", "bfloat16+int8dyn"]
    chosen = auto_dtype(args.device)
    flags = sorted(f for f in cpu_flags() if f.startswith("amx")) if args.device == "cpu" else []
    print(f"device {args.device}, {args.threads} thread(s), CPU flags {flags or '-'}: auto -> {chosen}")

    models = {v: load(args.model, args.device, v) for v in variants}
    timing: dict[str, dict[int, float]] = {v: {} for v in variants}
    for _ in range(args.repeats):
        for rows in args.rows:
            for v in variants:
                ms = step_ms(models[v], rows, args.steps)
                timing[v][rows] = min(ms, timing[v].get(rows, float("inf")))

    tokenizer = load_tokenizer(ModelSpec(path=args.model), None)
    items = builtin_items("dev")[: args.prompts]
    prompts = [
        tokenizer.apply_chat_template(
            [m.model_dump() for m in item_messages(item)], add_generation_prompt=True, tokenize=True
        )
        for item in items
    ]
    prompts = [
        list(p["input_ids"]) if isinstance(p, dict) or hasattr(p, "keys") else list(p) for p in prompts
    ]
    reference = [greedy(models["float32"], p, args.tokens) for p in prompts]
    agreement: dict[str, tuple[int, str]] = {}
    for v in variants[1:]:
        same, firsts = 0, []
        for p, ref in zip(prompts, reference, strict=True):
            out = greedy(models[v], p, args.tokens)
            diff = next((i for i, (a, b) in enumerate(zip(ref, out, strict=True)) if a != b), None)
            if diff is None:
                same += 1
            else:
                firsts.append(diff)
        agreement[v] = (same, f"{statistics.median(firsts):g}" if firsts else "-")

    header = " | ".join(f"{r} row{'s' if r > 1 else ''} ms/step" for r in args.rows)
    print(
        f"\n| weights | {header} | {args.rows[-1]}-row tok/s | greedy = float32 "
        f"({len(prompts)} prompts x {args.tokens} tokens) | median first divergence |"
    )
    print("|---|" + "---|" * (len(args.rows) + 3))
    base = timing["float32"]
    for v in variants:
        cells = " | ".join(
            f"{timing[v][r]:.0f}" + ("" if v == "float32" else f" ({base[r] / timing[v][r]:.2f}x)")
            for r in args.rows
        )
        rate = args.rows[-1] * 1000 / timing[v][args.rows[-1]]
        same, first = agreement.get(v, (len(prompts), "-"))
        label = v.replace("+int8wo", " + torchao int8 weight-only").replace(
            "+int8dyn", " + torchao int8 dynamic"
        )
        agreed = f"{same}/{len(prompts)}" if prompts else "-"
        print(f"| {label} | {cells} | {rate:.0f} | {agreed} | {first} |")


if __name__ == "__main__":
    main()
