"""``deepconf_vote`` (alias ``confidence_vote``, ``aggregation_level: response``): a vote of the
most confident whole answers, each weighted by its confidence.

Algorithm (DeepConf, offline mode): every selected member writes ``samples_per_model`` whole
answers; each candidate's trace confidence is the lowest mean, over any ``window`` consecutive
tokens, of its token confidence (minus the mean log-probability of the 20 most likely tokens at
each step, computed while decoding: ``Candidate.token_confidence``). The ``keep_fraction`` most
confident candidates (at least one) vote for their extracted final answer with weight equal to
their trace confidence; the answer with the largest total weight wins and the returned text is
its most confident candidate. Candidates that copy the prompt (``copy_threshold``) and
candidates without an answer do not vote; when none is left the most confident candidate is
returned. A candidate without per-token numbers (a remote model that returns none) votes with
the mean weight of the others.
Trace confidence is a model's opinion of its own text: the weights compare samples of one
model well and different models only roughly (different vocabularies and calibration).
Reference: Fu, Wang, Tian, Zhao, "Deep Think with Confidence" (2025), lowest group confidence,
confidence filtering (top 10% / top 90%) and confidence-weighted majority voting.
Parameters: ``samples_per_model``, ``window`` (16), ``keep_fraction`` (0.9), ``answer_format``,
``copy_threshold``.
Cost: the decodes only; the confidences are by-products of decoding.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import Field

from ensemble_core.aggregation.base import CandidateRecord
from ensemble_core.aggregation.level_base import LevelJob
from ensemble_core.aggregation.response_base import ResponseAggregator, ResponseParams, voters
from ensemble_core.aggregation.response_vote import group_by_answer
from ensemble_core.answer_extraction import ExtractedAnswer
from ensemble_core.members import Member
from ensemble_core.scorers.confidence import trace_confidence


class ConfidenceVoteParams(ResponseParams):
    window: int = Field(16, ge=1, description="tokens per sliding window of the trace confidence")
    keep_fraction: float = Field(
        0.9,
        gt=0.0,
        le=1.0,
        description="share of the most confident candidates that vote (DeepConf: 0.1 or 0.9)",
    )


def confidence_weights(records: list[CandidateRecord], window: int) -> list[float]:
    """Each candidate's trace confidence; a candidate without numbers gets the others' mean."""
    values = [trace_confidence(r.candidate.token_confidence, window) for r in records]
    known = [v for v in values if math.isfinite(v)]
    fill = sum(known) / len(known) if known else 1.0
    return [v if math.isfinite(v) else fill for v in values]


def weighted_vote(
    records: list[CandidateRecord],
    answers: list[ExtractedAnswer | None],
    weights: list[float],
    keep_fraction: float,
) -> tuple[CandidateRecord, dict[str, Any]]:
    """The DeepConf decision over ``records``: filter to the most confident, weighted vote."""
    weight = {id(r): w for r, w in zip(records, weights, strict=True)}
    eligible = voters(records)
    keep = max(1, math.ceil(keep_fraction * len(eligible)))
    kept = sorted(eligible, key=lambda r: weight[id(r)], reverse=True)[:keep]
    kept_ids = {id(r) for r in kept}
    filtered_answers = [a if id(r) in kept_ids else None for r, a in zip(records, answers, strict=True)]
    groups = group_by_answer(records, filtered_answers)
    totals = {known.normalized: sum(weight[id(r)] for r in group) for known, group in groups}
    summary: dict[str, Any] = {
        "weights": {k: round(v, 4) for k, v in totals.items()},
        "votes": {known.normalized: len(group) for known, group in groups},
        "kept": len(kept),
        "candidates": len(records),
        "copies": sum(1 for r in records if r.vetoed),
    }
    if not groups:
        winner = max(kept, key=lambda r: weight[id(r)])
        summary.update(winning_answer=None, note="no confident candidate had an answer")
        return winner, summary
    answer, group = max(groups, key=lambda g: sum(weight[id(r)] for r in g[1]))
    summary["winning_answer"] = answer.normalized
    return max(group, key=lambda r: weight[id(r)]), summary


class ConfidenceVoteResponseAggregator(ResponseAggregator):
    Params = ConfidenceVoteParams

    def pick(
        self,
        job: LevelJob,
        members: list[Member],
        records: list[CandidateRecord],
        answers: list[ExtractedAnswer | None],
    ) -> tuple[CandidateRecord, dict[str, Any], str | None, str | None]:
        params = self.params
        assert isinstance(params, ConfidenceVoteParams)
        weights = confidence_weights(records, params.window)
        for record, value in zip(records, weights, strict=True):
            record.raw_scores = {"confidence": value}
        winner, summary = weighted_vote(records, answers, weights, params.keep_fraction)
        return winner, summary, None, None
