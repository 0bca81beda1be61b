"""``ensemblehub eval [FILE.jsonl]``: ensemble vs single models on question/answer items.

Without a file it uses the built-in arithmetic word problems (generated, offline). Models come
from ``--model_specs`` (default: the bundled configuration).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_eval_command(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("eval", help="compare the ensemble methods with each single model on Q/A items")
    p.add_argument(
        "file",
        type=Path,
        nargs="?",
        default=None,
        help="JSONL with question and answer (default: built-in set)",
    )
    p.add_argument("--limit", type=int, default=20, help="number of items (default 20)")
    p.add_argument("--model_specs", default=None, help="as for the API (default: the bundled models)")
    p.add_argument(
        "--methods",
        default="round_robin,reward_based,progressive",
        help="comma-separated aggregation methods, optionally level:method (e.g. response:majority_vote)",
    )
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)


def read_items(path: Path) -> list[dict[str, str]]:
    items = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        item = json.loads(line)
        if "question" not in item or "answer" not in item:
            raise ValueError(f"{path}:{number}: each item needs 'question' and 'answer'")
        items.append({"question": str(item["question"]), "answer": str(item["answer"])})
    return items


def run_eval(args: argparse.Namespace) -> int:
    from api.server_flags import parse_model_specs
    from ensemble_core.bundled import default_ensemble_spec
    from ensemble_core.errors import EnsembleError
    from ensemble_core.pool import ModelPool
    from ensemble_core.spec import EnsembleSpec
    from evaluation.arithmetic_set import builtin_problems
    from evaluation.runner import HEADERS, evaluate, method_rows, single_model_rows

    try:
        items = read_items(args.file) if args.file else builtin_problems(args.limit, seed=args.seed)
        items = items[: args.limit]
        spec = default_ensemble_spec()
        if args.model_specs:
            spec = EnsembleSpec(model_specs=parse_model_specs(args.model_specs))
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        rows = single_model_rows(spec) + method_rows(spec, methods)
        results = evaluate(items, rows, ModelPool(), max_tokens=args.max_tokens, seed=args.seed)
    except (ValueError, OSError, EnsembleError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    source = str(args.file) if args.file else "built-in arithmetic set"
    print(
        f"\n{len(items)} items from {source}; models: {', '.join(m.display_name for m in spec.model_specs)}\n"
    )
    print_markdown_table(HEADERS, [r.as_cells() for r in results])
    return 0


def print_markdown_table(headers: list[str], rows: list[list[object]]) -> None:
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells[1:]:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
