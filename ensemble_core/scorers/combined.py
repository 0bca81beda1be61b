"""Several scorers as one: raw scores per scorer, normalised within the round, then weighted.

Raw scores of different scorers live on different scales (a reward logit, a mean
log-probability, a cosine), so adding them raw lets one scorer dominate by accident. Each
scorer's scores are normalised across the round's candidates first (``zscore`` by default;
``minmax``, ``rank`` or ``none``), then summed with the configured weights. The first scorer is
the primary one: ``score_threshold`` compares its raw score.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from ensemble_core.lazy_import import load_object
from ensemble_core.members import Member
from ensemble_core.ports import GenerationSession, Scorer, ScoringRequest
from ensemble_core.scorers import SCORER_IMPLEMENTATIONS
from ensemble_core.scorers.specs import LikelihoodScorerSpec, Normalization, parse_scorer_specs
from ensemble_core.spec import GenerationRequest

if TYPE_CHECKING:
    from ensemble_core.aggregation.base import CandidateRecord
    from ensemble_core.pool import ModelPool

__all__ = ["CombinedScorer", "build_scorer", "normalise", "parse_scorer_specs"]


class ScorerHost(Protocol):
    """What scorers may use from the running job."""

    pool: ModelPool
    members: list[Member]

    def session(self, member: Member) -> GenerationSession: ...

    def run_parallel(self, tasks: list[Callable[[], Any]]) -> list[Any]:
        """Run independent forward work (different models) concurrently where allowed."""
        ...


def normalise(values: list[float], method: Normalization) -> list[float]:
    """Put one scorer's scores of one round on a common scale."""
    if method == "none" or len(values) < 2:
        return [0.0 if method != "none" else v for v in values]
    if method == "rank":
        order = sorted(range(len(values)), key=lambda i: values[i])
        ranks = [0.0] * len(values)
        for rank, i in enumerate(order):
            ranks[i] = rank / (len(values) - 1)
        return ranks
    if method == "minmax":
        low, high = min(values), max(values)
        span = high - low
        return [(v - low) / span if span > 0 else 0.0 for v in values]
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    return [(v - mean) / std if std > 0 else 0.0 for v in values]


class CombinedScorer:
    def __init__(self, parts: list[tuple[Any, Scorer]], normalization: Normalization) -> None:
        self.parts = parts
        self.normalization = normalization
        self.names: list[str] = []
        for _spec, scorer in parts:
            name = scorer.name
            while name in self.names:
                name += "'"
            self.names.append(name)

    def score_texts(self, request: ScoringRequest) -> tuple[list[float], list[dict[str, float]]]:
        """Combined (normalised, weighted) scores and the raw scores per scorer."""
        n = len(request.candidates)
        combined = [0.0] * n
        raw_rows: list[dict[str, float]] = [{} for _ in range(n)]
        for (spec, scorer), name in zip(self.parts, self.names, strict=True):
            raw = [float(v) for v in scorer.score(request)]
            finite = [v for v in raw if math.isfinite(v)]
            fill = sum(finite) / len(finite) if finite else 0.0
            raw = [v if math.isfinite(v) else fill for v in raw]
            for row, value in zip(raw_rows, raw, strict=True):
                row[name] = value
            for i, value in enumerate(normalise(raw, self.normalization)):
                combined[i] += spec.weight * value
        if self.normalization == "none" or n == 1:
            # a single candidate: keep the primary raw score so thresholds still mean something
            if n == 1 and self.parts:
                combined = [raw_rows[0][self.names[0]]]
        return combined, raw_rows

    def score_records(
        self, request: GenerationRequest, accepted_text: str, records: list[CandidateRecord]
    ) -> None:
        scoring = ScoringRequest(
            messages=list(request.messages),
            accepted_text=accepted_text,
            candidates=[r.candidate.text for r in records],
            authors=[r.member.name for r in records],
            author_load_keys=[r.member.load_key for r in records],
            author_logprobs=[list(r.candidate.token_logprobs) for r in records],
        )
        combined, raw_rows = self.score_texts(scoring)
        for record, score, raw in zip(records, combined, raw_rows, strict=True):
            record.score = score
            record.raw_scores = raw

    def primary_raw(self, record: CandidateRecord) -> float | None:
        if not self.names or self.names[0] not in record.raw_scores:
            return None
        return record.raw_scores[self.names[0]]

    def usage(self) -> dict[str, int]:
        """Tokens prefilled by scorer models that are not generators of the job."""
        totals: dict[str, int] = {}
        for _, scorer in self.parts:
            report = getattr(scorer, "prefilled_tokens", None)
            if report:
                for name, count in report().items():
                    totals[name] = totals.get(name, 0) + count
        return totals


def build_scorer(
    raw_specs: list[Any], host: ScorerHost, normalization: Normalization = "zscore"
) -> CombinedScorer:
    specs = parse_scorer_specs(raw_specs) if raw_specs else [LikelihoodScorerSpec.model_validate({})]
    parts: list[tuple[Any, Scorer]] = []
    for spec in specs:
        cls = load_object(SCORER_IMPLEMENTATIONS[spec.type])
        parts.append((spec, cls(spec, host)))
    return CombinedScorer(parts, normalization)
