"""Several scorers as one: raw scores per scorer, centred within the round, weighted, guarded.

Raw scores of different scorers live in different units (nats per byte, a reward logit, a
share in [0, 1]); each scorer documents its unit and its weight is chosen knowing it. The
default ``center`` normalisation subtracts the round mean of each scorer and keeps the scale,
so a scorer that is barely sure moves the decision barely, and one that sees a large gap moves
it much. (Per-round ``zscore``, the old default, maps any gap between two candidates, tiny or
huge, to +/-1 and so erases how sure a scorer is; ``zscore``, ``minmax``, ``rank`` and ``none``
remain for configs that name them.) Then the copy guard (``copy_guard``) ranks every echo of
the question or of the accepted text, and every empty first answer, below the other candidates,
whatever the scorers said. The trace keeps each scorer's raw numbers and the copied share.
The first scorer is the primary one: ``score_threshold`` compares its raw score.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ensemble_core.lazy_import import load_object
from ensemble_core.members import Member
from ensemble_core.ports import GenerationSession, Scorer, ScoringRequest
from ensemble_core.scorers import SCORER_IMPLEMENTATIONS
from ensemble_core.scorers.copy_guard import CopyGuard, user_sources
from ensemble_core.scorers.specs import LikelihoodScorerSpec, Normalization, parse_scorer_specs
from ensemble_core.spec import GenerationRequest

if TYPE_CHECKING:
    from ensemble_core.aggregation.base import CandidateRecord
    from ensemble_core.pool import ModelPool

__all__ = ["CombinedScorer", "CopyGuard", "build_scorer", "normalise", "parse_scorer_specs"]


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
    if method == "center":
        mean = sum(values) / len(values)
        return [v - mean for v in values]
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


@dataclass
class ScoredRound:
    combined: list[float]
    raw: list[dict[str, float]]
    copied: list[float]
    vetoed: list[bool]

    def fill(self, records: list[CandidateRecord]) -> None:
        """Write the scores and the copy guard's verdict onto the round's records."""
        for i, record in enumerate(records):
            record.score, record.raw_scores = self.combined[i], self.raw[i]
            record.copied, record.vetoed = self.copied[i], self.vetoed[i]


class CombinedScorer:
    def __init__(
        self,
        parts: list[tuple[Any, Scorer]],
        normalization: Normalization,
        guard: CopyGuard | None = None,
    ) -> None:
        self.parts = parts
        self.normalization = normalization
        self.guard = guard or CopyGuard()
        self.names: list[str] = []
        for _spec, scorer in parts:
            name = scorer.name
            while name in self.names:
                name += "'"
            self.names.append(name)

    def score_texts(self, request: ScoringRequest) -> tuple[list[float], list[dict[str, float]]]:
        """Combined (normalised, weighted, guarded) scores and the raw scores per scorer."""
        scored = self.score_round(request)
        return scored.combined, scored.raw

    def score_round(self, request: ScoringRequest) -> ScoredRound:
        """Combined scores, raw scores per scorer, and the copy guard's verdict per candidate."""
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
        if n == 1 and self.parts:
            # a single candidate: keep the primary raw score so thresholds still mean something
            combined = [raw_rows[0][self.names[0]]]
        sources = user_sources(request.messages)
        checks = [self.guard.check(text, sources, request.accepted_text) for text in request.candidates]
        vetoed = [veto for _, veto in checks]
        return ScoredRound(
            self.guard.rank_last(combined, vetoed), raw_rows, [copied for copied, _ in checks], vetoed
        )

    def score_records(
        self, request: GenerationRequest, accepted_text: str, records: list[CandidateRecord]
    ) -> None:
        scoring = ScoringRequest(
            prompt=request.prompt_input(),
            accepted_text=accepted_text,
            candidates=[r.candidate.text for r in records],
            authors=[r.member.name for r in records],
            author_load_keys=[r.member.session_key for r in records],
            author_logprobs=[list(r.candidate.token_logprobs) for r in records],
            author_confidence=[list(r.candidate.token_confidence) for r in records],
            author_self_certainty=[list(r.candidate.token_self_certainty) for r in records],
        )
        self.score_round(scoring).fill(records)

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
    raw_specs: list[Any],
    host: ScorerHost,
    normalization: Normalization = "center",
    guard: CopyGuard | None = None,
) -> CombinedScorer:
    specs = parse_scorer_specs(raw_specs) if raw_specs else [LikelihoodScorerSpec.model_validate({})]
    parts: list[tuple[Any, Scorer]] = []
    for spec in specs:
        cls = load_object(SCORER_IMPLEMENTATIONS[spec.type])
        parts.append((spec, cls(spec, host)))
    return CombinedScorer(parts, normalization, guard)
