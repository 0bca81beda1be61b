"""``reward_based`` (guide alias ``simple``): every member proposes a segment, the scorers pick.

Algorithm: each round every selected member continues the accepted text by one segment
(members on the same weights are decoded in one batch, different models concurrently); the
configured scorers score the candidates (each scorer centred within the round, then weighted,
then the copy guard ranks echoes of the prompt or the accepted text last); the best is appended. When ``score_threshold`` is set and the best candidate's
primary (first scorer's) raw score is below it, the round is resampled up to ``max_resamples``
times; then the best of all attempts (by primary raw score) is kept and the round's notes say so.
The first round's segment has at most ``first_segment_tokens`` (default 8) tokens: a segment
is streamed only once it has won, so a short first one brings the first chunk soon (time to
first token); a lone member, streamed as it decodes, keeps ``segment_tokens``.
Reference: the upstream Ensemble-Hub "simple" reward-guided ensemble; reward-guided segment
selection as in step-level best-of-n.
Cost per round: one segment decode per member (batched per base model) plus the scorers'
passes (the likelihood scorer on own weights is free; other models score all candidates in
one batched forward over their cached prefix).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from ensemble_core.aggregation.base import (
    CandidateRecord,
    RoundContext,
    RoundOutcome,
    SegmentAggregator,
    SegmentParams,
)
from ensemble_core.scorers.specs import Normalization, parse_scorer_specs


class RewardBasedParams(SegmentParams):
    scorers: list[dict[str, Any]] = Field(
        default_factory=list,
        description="scorer configs ({type: likelihood|reward_model|prm|embedding|remote, weight, ...}); "
        "empty: likelihood under the other members",
    )
    normalization: Normalization = Field(
        "center", description="per-round normalisation of each scorer (center keeps its scale)"
    )
    copy_threshold: float = Field(
        0.8,
        ge=0.0,
        description="copy guard: a candidate whose words are this share copied from the prompt or "
        "the accepted text ranks last (above 1: off)",
    )
    score_threshold: float | None = Field(
        None, description="resample a round whose best primary raw score is below this"
    )
    max_resamples: int = Field(2, ge=0, description="most resamples of one round")
    first_segment_tokens: int | None = Field(
        8,
        ge=1,
        description="most tokens of the first round's segment (short, so a stream's first chunk "
        "comes soon); null: segment_tokens",
    )

    @field_validator("scorers")
    @classmethod
    def _known_scorers(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        parse_scorer_specs(value)
        return value


class RewardSegmentAggregator(SegmentAggregator):
    Params = RewardBasedParams
    uses_scorers = True

    def run_round(self, ctx: RoundContext) -> RoundOutcome:
        params = self.params
        assert isinstance(params, RewardBasedParams)
        all_records: list[CandidateRecord] = []
        best_per_attempt: list[CandidateRecord] = []
        greedy_only = all(m.sampling.temperature <= 0 for m in ctx.members)
        notes: dict[str, Any] = {}
        for attempt in range(params.max_resamples + 1):
            records = ctx.generate(ctx.members, attempt=attempt)
            if len(records) > 1 or params.score_threshold is not None:
                ctx.score(records)  # a lone candidate needs a score only for the threshold
            all_records.extend(records)
            best = max(records, key=lambda r: r.score if r.score is not None else float("-inf"))
            best_per_attempt.append(best)
            primary = _primary(best)
            if params.score_threshold is None or primary is None or primary >= params.score_threshold:
                break
            if greedy_only:
                notes["resample_skipped"] = "all members decode greedily: a resample would repeat them"
                break
        if len(best_per_attempt) > 1 or notes:
            notes["attempts"] = len(best_per_attempt)
            below = [p for p in (_primary(b) for b in best_per_attempt) if p is not None]
            notes["below_threshold"] = bool(below) and max(below) < (params.score_threshold or 0.0)
        winner = max(best_per_attempt, key=_primary_or_floor)
        return RoundOutcome(winner=winner, candidates=all_records, notes=notes)


def _primary_or_floor(record: CandidateRecord) -> float:
    if record.vetoed:  # an echo never wins across attempts either
        return float("-inf")
    primary = _primary(record)
    return primary if primary is not None else float("-inf")


def _primary(record: CandidateRecord) -> float | None:
    if not record.raw_scores:
        return record.score
    return next(iter(record.raw_scores.values()))
