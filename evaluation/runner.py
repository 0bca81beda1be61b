"""Run each single member and each chosen ensemble method over the items; one table.

Rows: every distinct member alone (greedy), the oracle (an item counts when any member alone
is right: the headroom an ensemble could reach), and each method with all members. Columns:
accuracy per item kind and overall, generated tokens (every candidate of every member, losers
included: what the method really costs), forward passes and wall time.

Items of one row run concurrently in threads (``concurrency``): the HF backend batches the
decode steps of concurrent jobs on one model, so a row of 300 short answers takes minutes, not
an hour. Before a row is timed, one warm-up question (not an item) loads every model and scorer
it needs; nothing is cached across items, so each item pays its method's full cost.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ensemble_core.engine import run_ensemble
from ensemble_core.errors import EnsembleError
from ensemble_core.spec import EnsembleConfig, EnsembleSpec, GenerationRequest
from evaluation.grading import is_correct
from evaluation.item_set import Item
from evaluation.prompting import item_messages

WARM_UP = Item("warm-up", "fact", "warm-up", "What is the capital of Peru?", ("Lima",), "dev")


@dataclass
class ItemResult:
    item_id: str
    kind: str
    answer: str
    correct: bool
    generated_tokens: int
    error: str | None = None
    # response-level methods: every whole answer the method chose from (model, text, tokens,
    # mean_logprob, correct), so selection rules can be compared offline on the same answers
    candidates: list[dict[str, Any]] | None = None


@dataclass
class EvalRow:
    label: str
    results: list[ItemResult] = field(default_factory=list)
    forward_passes: int = 0
    wall_s: float = 0.0

    @property
    def correct(self) -> int:
        return sum(r.correct for r in self.results)

    @property
    def total(self) -> int:
        return len(self.results)

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    @property
    def generated_tokens(self) -> int:
        return sum(r.generated_tokens for r in self.results)

    @property
    def failures(self) -> list[str]:
        return [f"{r.item_id}: {r.error}" for r in self.results if r.error]

    def kind_accuracy(self, kind: str) -> str:
        rows = [r for r in self.results if r.kind == kind]
        return f"{sum(r.correct for r in rows) / len(rows):.1%}" if rows else "-"

    def as_cells(self, kinds: Sequence[str]) -> list[Any]:
        return [
            self.label,
            *(self.kind_accuracy(k) for k in kinds),
            f"{self.accuracy:.1%} ({self.correct}/{self.total})",
            self.generated_tokens,
            self.forward_passes,
            round(self.wall_s, 1),
        ]


def headers(kinds: Sequence[str]) -> list[str]:
    return ["row", *kinds, "overall", "generated tokens", "forward passes", "wall time (s)"]


Row = tuple[str, EnsembleSpec, EnsembleConfig]
SINGLE_CONFIG = EnsembleConfig(model_selection_method="all", aggregation_method="round_robin", max_rounds=64)


def single_model_rows(spec: EnsembleSpec) -> list[Row]:
    """One greedy row per distinct member (members differing only in sampling are one model)."""
    rows: list[Row] = []
    seen: set[str] = set()
    for member in spec.model_specs:
        key = member.model_copy(update={"name": None, "temperature": None, "top_p": None}).model_dump_json()
        if key in seen:
            continue
        seen.add(key)
        greedy = member.model_copy(update={"temperature": 0.0})
        alone = EnsembleSpec(model_specs=[greedy], default_ensemble_config=spec.default_ensemble_config)
        rows.append((f"single: {member.display_name}", alone, SINGLE_CONFIG))
    return rows


def method_config(method: str, spec: EnsembleSpec) -> EnsembleConfig:
    """``default`` (the spec's own config), ``name`` or ``level:name`` (e.g. ``token:gac``)."""
    if method == "default":
        return spec.default_ensemble_config
    level, _, name = method.rpartition(":")
    return EnsembleConfig(
        model_selection_method="all",
        aggregation_method=name,
        aggregation_level=level or "sentence",  # type: ignore[arg-type]
        max_rounds=64,
        score_threshold=None,
    )


def method_rows(
    spec: EnsembleSpec, methods: Sequence[str], named: dict[str, EnsembleConfig] | None = None
) -> list[Row]:
    rows: list[Row] = [(f"ensemble: {m}", spec, method_config(m, spec)) for m in methods]
    rows += [(f"ensemble: {label}", spec, config) for label, config in (named or {}).items()]
    return rows


def _request(item: Item, max_tokens: int, seed: int) -> GenerationRequest:
    # no request temperature: it would override every member's own (single rows set theirs to 0)
    return GenerationRequest(messages=item_messages(item), max_tokens=max_tokens, stop=["\n"], seed=seed)


def _run_item(item: Item, spec: EnsembleSpec, config: EnsembleConfig, pool: Any, max_tokens: int, seed: int):
    try:
        result = run_ensemble(spec, config, _request(item, max_tokens, seed), pool)
    except EnsembleError as exc:
        return ItemResult(item.id, item.kind, "", False, 0, f"{type(exc).__name__}: {exc}"), 0
    usage = result.usage.per_model.values()
    generated = sum(u.generated for u in usage)
    passes = sum(u.forward_passes for u in usage)
    answer = ItemResult(item.id, item.kind, result.text, is_correct(item, result.text), generated)
    answer.candidates = _graded_candidates(item, result.trace)
    return answer, passes


def _graded_candidates(item: Item, trace: dict[str, Any]) -> list[dict[str, Any]] | None:
    rounds = trace.get("rounds") or []
    if "summary" not in trace or len(rounds) != 1 or "candidates" not in rounds[0]:
        return None  # not a response-level method (its one round holds the whole answers)
    keep = ("model", "text", "tokens", "mean_logprob", "finish", "vetoed", "score", "raw_scores")
    return [
        {**{k: c[k] for k in keep if k in c}, "correct": is_correct(item, c.get("text", ""))}
        for c in rounds[0].get("candidates", [])
    ]


def evaluate_row(
    items: Sequence[Item],
    row: Row,
    pool: Any,
    *,
    max_tokens: int = 16,
    seed: int = 0,
    concurrency: int = 8,
) -> EvalRow:
    label, spec, config = row
    _run_item(WARM_UP, spec, config, pool, max_tokens, seed)  # loads models and scorers, untimed
    out = EvalRow(label)
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="eval") as executor:
        done = list(executor.map(lambda it: _run_item(it, spec, config, pool, max_tokens, seed), items))
    out.wall_s = time.perf_counter() - started
    out.results = [result for result, _ in done]
    out.forward_passes = sum(passes for _, passes in done)
    return out


def oracle_row(singles: Sequence[EvalRow]) -> EvalRow:
    """An item is right when any member alone got it right; cost is all members' cost."""
    out = EvalRow("oracle (any member right)")
    for per_item in zip(*(row.results for row in singles), strict=True):
        first = per_item[0]
        right = next((r for r in per_item if r.correct), first)
        out.results.append(
            ItemResult(
                first.item_id,
                first.kind,
                right.answer,
                right.correct,
                sum(r.generated_tokens for r in per_item),
            )
        )
    out.forward_passes = sum(row.forward_passes for row in singles)
    out.wall_s = sum(row.wall_s for row in singles)
    return out


def evaluate(
    items: Sequence[Item],
    rows: Sequence[Row],
    pool: Any,
    *,
    max_tokens: int = 16,
    seed: int = 0,
    concurrency: int = 8,
    singles: int = 0,
    on_row: Any = None,
) -> list[EvalRow]:
    """Evaluate ``rows`` in order; the first ``singles`` rows are members alone (an oracle row
    follows them when there are two or more)."""
    results: list[EvalRow] = []
    for index, row in enumerate(rows):
        evaluated = evaluate_row(items, row, pool, max_tokens=max_tokens, seed=seed, concurrency=concurrency)
        results.append(evaluated)
        if on_row is not None:
            on_row(evaluated)
        if index == singles - 1 and singles >= 2:
            results.append(oracle_row(results[:singles]))
            if on_row is not None:
                on_row(results[-1])
    return results
