"""Answers of ``ensemblehub eval --output`` as JSONL, and one table from several such files.

A long evaluation runs as several bounded invocations (one or two rows each); ``python -m
evaluation.report A.jsonl B.jsonl ...`` prints their rows as one table, with the oracle over the
single-member rows recomputed from the per-item answers. Each row's numbers are the ones
measured when it ran (nothing is re-run or re-timed here).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from evaluation.runner import EvalRow, ItemResult, headers, oracle_row


def write_rows(path: Path, rows: list[EvalRow], append: bool = False) -> None:
    with path.open("a" if append else "w") as out:
        for row in rows:
            out.write(
                json.dumps(
                    {
                        "row": row.label,
                        "summary": True,
                        "wall_s": row.wall_s,
                        "forward_passes": row.forward_passes,
                    }
                )
                + "\n"
            )
            for r in row.results:
                out.write(json.dumps({"row": row.label, **r.__dict__}) + "\n")


def read_rows(paths: list[Path]) -> list[EvalRow]:
    rows: dict[str, EvalRow] = {}
    for path in paths:
        for line in path.read_text().splitlines():
            record = json.loads(line)
            row = rows.setdefault(record["row"], EvalRow(record["row"]))
            if record.get("summary"):
                row.wall_s, row.forward_passes = record["wall_s"], record["forward_passes"]
            else:
                fields = {
                    k: record.get(k)
                    for k in (
                        "item_id",
                        "kind",
                        "answer",
                        "correct",
                        "generated_tokens",
                        "error",
                        "candidates",
                    )
                }
                row.results.append(ItemResult(**fields))
    return list(rows.values())


def merged_table(rows: list[EvalRow]) -> tuple[list[str], list[list[object]]]:
    singles = [r for r in rows if r.label.startswith("single: ")]
    rest = [r for r in rows if not r.label.startswith("single: ") and not r.label.startswith("oracle")]
    ordered = singles + ([oracle_row(singles)] if len(singles) >= 2 else []) + rest
    kinds: list[str] = []
    for r in ordered[0].results if ordered else []:
        if r.kind not in kinds:
            kinds.append(r.kind)
    return headers(kinds), [row.as_cells(kinds) for row in ordered]


def print_markdown_table(headers: list[str], rows: list[list[object]]) -> None:
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells[1:]:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")


def main(argv: list[str]) -> int:
    rows = read_rows([Path(a) for a in argv])
    ids = {tuple(sorted(r.item_id for r in row.results)) for row in rows}
    if len(ids) > 1:
        print("error: the files do not cover the same items", file=sys.stderr)
        return 1
    print_markdown_table(*merged_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
