"""``ensemblehub eval [FILE.jsonl]``: each member alone, the oracle and each ensemble method.

Without a file it uses the built-in items (``evaluation/item_set.py``: 480 questions of four
kinds, fixed dev/test split; ``--split test`` by default). Models come from ``--model_specs``
(default: the bundled configuration). ``--export-items FILE`` writes the built-in items as JSONL
(the format a file given here, or an lm-evaluation-harness local task, reads).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def add_eval_command(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("eval", help="compare the ensemble methods with each single model on Q/A items")
    p.add_argument(
        "file",
        type=Path,
        nargs="?",
        default=None,
        help="JSONL with question and answer (optional: answers, kind, options, split, id); default: built-in set",
    )
    p.add_argument(
        "--split", choices=["dev", "test", "all"], default="test", help="items of this split (default test)"
    )
    p.add_argument("--kinds", default=None, help="comma-separated item kinds (default: all)")
    p.add_argument("--limit", type=int, default=None, help="at most this many items (kinds taken in turn)")
    p.add_argument("--model_specs", default=None, help="as for the API (default: the bundled models)")
    p.add_argument(
        "--methods",
        default="default,round_robin,reward_based,response:majority_vote,token:gac",
        help="comma-separated: default (the spec's own config), an aggregation name, or level:name",
    )
    p.add_argument(
        "--method",
        action="append",
        default=[],
        metavar="LABEL=JSON",
        help="an extra row with a full ensemble config (JSON fields of EnsembleConfig; model selection "
        "'all' unless given); repeatable",
    )
    p.add_argument("--no-singles", action="store_true", help="skip the single-member and oracle rows")
    p.add_argument("--max-tokens", type=int, default=16, help="per answer (default 16; answers are one line)")
    p.add_argument("--concurrency", type=int, default=8, help="items run at once per row (default 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--output", type=Path, default=None, help="write every answer as JSONL (row, item, answer, correct)"
    )
    p.add_argument(
        "--export-items", type=Path, default=None, help="write the selected items as JSONL and exit"
    )


def read_items(path: Path) -> list[Any]:
    from evaluation.item_set import Item

    items = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        raw = json.loads(line)
        if "question" not in raw or "answer" not in raw:
            raise ValueError(f"{path}:{number}: each item needs 'question' and 'answer'")
        answers = [str(a) for a in raw.get("answers") or [raw["answer"]]]
        if str(raw["answer"]) not in answers:
            answers.insert(0, str(raw["answer"]))
        items.append(
            Item(
                id=str(raw.get("id", f"line-{number}")),
                kind=str(raw.get("kind", "file")),  # type: ignore[arg-type]
                topic=str(raw.get("topic", "")),
                question=str(raw["question"]),
                answers=tuple(answers),
                split=str(raw.get("split", "test")),  # type: ignore[arg-type]
                options=tuple(str(o) for o in raw.get("options", ())),
            )
        )
    return items


def _named_methods(entries: list[str]) -> dict[str, Any]:
    from ensemble_core.spec import EnsembleConfig

    named = {}
    for entry in entries:
        label, sep, body = entry.partition("=")
        if not sep or not label.strip():
            raise ValueError(f"--method needs LABEL=JSON, got {entry!r}")
        # every member takes part unless the row says otherwise, as in the --methods rows (the
        # config's own default, zscore selection, keeps only some members: not the ensemble the
        # row claims to measure)
        fields = json.loads(body)
        if not isinstance(fields, dict):
            raise ValueError(f"--method {label.strip()}: the JSON must be an object")
        named[label.strip()] = EnsembleConfig.model_validate({"model_selection_method": "all", **fields})
    return named


def select_items(args: argparse.Namespace) -> list[Any]:
    from evaluation.item_set import builtin_items, interleaved

    kinds = tuple(k.strip() for k in args.kinds.split(",")) if args.kinds else None
    if args.file:
        items = [
            it
            for it in read_items(args.file)
            if (args.split == "all" or it.split == args.split) and (kinds is None or it.kind in kinds)
        ]
    else:
        items = builtin_items(args.split, kinds, seed=args.seed)
    items = interleaved(items)
    return items[: args.limit] if args.limit is not None else items


def _row_done(row: Any, output: Path | None) -> None:
    from evaluation.report import write_rows

    print(f"  {row.label}: {row.accuracy:.1%} in {row.wall_s:.0f} s", file=sys.stderr, flush=True)
    if output is not None:
        write_rows(output, [row], append=True)


def run_eval(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from api.server_flags import parse_model_specs
    from ensemble_core.bundled import default_ensemble_spec
    from ensemble_core.errors import EnsembleError
    from ensemble_core.methods import plan_for
    from ensemble_core.pool import ModelPool
    from ensemble_core.spec import EnsembleSpec
    from evaluation.report import print_markdown_table
    from evaluation.runner import evaluate, headers, method_rows, single_model_rows

    try:
        items = select_items(args)
        if args.export_items:
            args.export_items.write_text("".join(json.dumps(it.as_json()) + "\n" for it in items))
            print(f"wrote {len(items)} items to {args.export_items}")
            return 0
        if not items:
            raise ValueError("no items selected")
        spec = default_ensemble_spec()
        if args.model_specs:
            spec = EnsembleSpec(model_specs=parse_model_specs(args.model_specs))
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        ensemble_rows = method_rows(spec, methods, _named_methods(args.method))
        for _, _, config in ensemble_rows:
            plan_for(config)  # a misspelled method fails before any model loads
        singles = [] if args.no_singles else single_model_rows(spec)
        if args.output:
            args.output.write_text("")  # rows are appended as they finish: a stopped run keeps them
        kinds = sorted({it.kind for it in items}, key=lambda k: [it.kind for it in items].index(k))
        print(
            f"{len(items)} items ({args.split} split, {args.file or 'built-in set'}); models: "
            + ", ".join(m.display_name for m in spec.model_specs),
            file=sys.stderr,
        )
        results = evaluate(
            items,
            singles + ensemble_rows,
            ModelPool(),
            max_tokens=args.max_tokens,
            seed=args.seed,
            concurrency=args.concurrency,
            singles=len(singles),
            on_row=lambda row: _row_done(row, args.output),
        )
    except (ValueError, OSError, EnsembleError, ValidationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"\n{len(items)} items; models: {', '.join(m.display_name for m in spec.model_specs)}\n")
    print_markdown_table(headers(kinds), [r.as_cells(kinds) for r in results])
    for row in results:
        if row.failures:
            print(f"\n{row.label}: {len(row.failures)} failed, e.g. {row.failures[0]}")
    return 0
