"""Run each single model and each chosen ensemble method over the items; one table.

Per row: accuracy (exact match of the extracted final answer), generated tokens, forward
passes and wall time, so a user sees what the ensemble buys over its best member.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ensemble_core.answer_extraction import grade
from ensemble_core.engine import run_ensemble
from ensemble_core.spec import ChatMessage, EnsembleConfig, EnsembleSpec, GenerationRequest

SYSTEM_PROMPT = "Solve the problem. End with 'The answer is N.' where N is a number."


@dataclass
class EvalRow:
    label: str
    correct: int = 0
    total: int = 0
    generated_tokens: int = 0
    forward_passes: int = 0
    wall_s: float = 0.0
    failures: list[str] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    def as_cells(self) -> list[Any]:
        return [
            self.label,
            f"{self.accuracy:.0%} ({self.correct}/{self.total})",
            self.generated_tokens,
            self.forward_passes,
            round(self.wall_s, 1),
        ]


HEADERS = ["row", "accuracy", "generated tokens", "forward passes", "wall time (s)"]


def single_model_rows(spec: EnsembleSpec) -> list[tuple[str, EnsembleSpec, EnsembleConfig]]:
    rows = []
    for member in spec.model_specs:
        alone = EnsembleSpec(model_specs=[member], default_ensemble_config=spec.default_ensemble_config)
        config = EnsembleConfig(model_selection_method="all", aggregation_method="round_robin", max_rounds=64)
        rows.append((f"single: {member.display_name}", alone, config))
    return rows


def method_rows(spec: EnsembleSpec, methods: Sequence[str]) -> list[tuple[str, EnsembleSpec, EnsembleConfig]]:
    """``methods`` are ``aggregation`` names, optionally ``level:method`` (e.g. ``response:majority_vote``)."""
    rows = []
    for method in methods:
        level, _, name = method.rpartition(":")
        config = EnsembleConfig(
            model_selection_method="all",
            aggregation_method=name,
            aggregation_level=level or "sentence",  # type: ignore[arg-type]
            max_rounds=64,
        )
        rows.append((f"ensemble: {method}", spec, config))
    return rows


def evaluate(
    items: Sequence[dict[str, str]],
    rows: Sequence[tuple[str, EnsembleSpec, EnsembleConfig]],
    pool: Any,
    *,
    max_tokens: int = 64,
    seed: int = 0,
) -> list[EvalRow]:
    results = []
    for label, spec, config in rows:
        row = EvalRow(label)
        for item in items:
            request = GenerationRequest(
                messages=[
                    ChatMessage(role="system", content=SYSTEM_PROMPT),
                    ChatMessage(role="user", content=item["question"]),
                ],
                max_tokens=max_tokens,
                seed=seed,
            )
            started = time.perf_counter()
            result = run_ensemble(spec, config, request, pool)
            row.wall_s += time.perf_counter() - started
            row.total += 1
            if grade(result.text, str(item["answer"])):
                row.correct += 1
            for usage in result.usage.per_model.values():
                row.generated_tokens += usage.generated
                row.forward_passes += usage.forward_passes
        results.append(row)
    return results
