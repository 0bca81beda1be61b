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
Trace confidence is a model's opinion of its own text: the raw weights compare samples of one
model well and different models only roughly (different vocabularies and calibration). With
``reference_stats`` (``ensemblehub calibrate --answer-tokens N``) for every member, a vote
weighs ``exp(z)``, z being its confidence against its own model's usual answer confidence.
Reference: Fu, Wang, Tian, Zhao, "Deep Think with Confidence" (2025), lowest group confidence,
confidence filtering (top 10% / top 90%) and confidence-weighted majority voting.
Parameters: ``samples_per_model``, ``window`` (16), ``keep_fraction`` (0.9), ``answer_format``,
``reference_stats``, ``copy_threshold``.
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
from ensemble_core.selection.zscore import ModelReferenceStats


class ConfidenceVoteParams(ResponseParams):
    window: int = Field(16, ge=1, description="tokens per sliding window of the trace confidence")
    keep_fraction: float = Field(
        0.9,
        gt=0.0,
        le=1.0,
        description="share of the most confident candidates that vote (DeepConf: 0.1 or 0.9)",
    )
    reference_stats: dict[str, ModelReferenceStats] = Field(
        default_factory=dict,
        description="per member name or model path (`ensemblehub calibrate --answer-tokens N`): "
        "when every member has answer_confidence, a vote weighs exp(z) of its confidence against "
        "its own model's usual one (one scale across models)",
    )


def confidence_weights(
    records: list[CandidateRecord],
    window: int,
    references: dict[str, ModelReferenceStats] | None = None,
) -> list[float]:
    """Each candidate's trace confidence (a candidate without numbers gets the others' mean);
    with calibrated ``references`` for every author, ``exp(z)`` of it against its model's usual
    answer confidence, so members with different vocabularies weigh on one scale."""
    values = [trace_confidence(r.candidate.token_confidence, window) for r in records]
    if references:
        refs = [references.get(r.member.name) or references.get(r.member.spec.path) for r in records]
        usual = [ref.answer_confidence for ref in refs if ref is not None and ref.answer_confidence]
        if len(usual) == len(records):
            values = [
                math.exp(max(min((v - u.mean) / max(u.std, 1e-6), 20.0), -20.0)) if math.isfinite(v) else v
                for v, u in zip(values, usual, strict=True)
            ]
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
        weights = confidence_weights(records, params.window, params.reference_stats)
        for record, value in zip(records, weights, strict=True):
            record.raw_scores = {"confidence": value}
        winner, summary = weighted_vote(records, answers, weights, params.keep_fraction)
        return winner, summary, None, None
