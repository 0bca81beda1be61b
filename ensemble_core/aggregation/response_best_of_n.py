"""``best_of_n`` (``aggregation_level: response``): the highest-scored whole answer wins.

Algorithm: every selected member writes ``samples_per_model`` whole answers; the
configured scorers score all of them at once (each scorer centred across the candidates,
then weighted; the copy guard ranks echoes of the prompt last) and the highest wins. Default scorer: likelihood including the author's own
log-probabilities (self-certainty; free for the author, one batched pass per other member).
Reference: best-of-n reranking (e.g. Cobbe et al. 2021 verifiers; Kang et al. 2025
self-certainty). Cost: the decodes plus one scoring pass per scorer model.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from ensemble_core.aggregation.base import CandidateRecord
from ensemble_core.aggregation.level_base import LevelJob
from ensemble_core.aggregation.response_base import ResponseAggregator, ResponseParams
from ensemble_core.answer_extraction import ExtractedAnswer
from ensemble_core.members import Member
from ensemble_core.ports import ScoringRequest
from ensemble_core.scorers.combined import parse_scorer_specs
from ensemble_core.scorers.specs import Normalization

DEFAULT_SCORERS: list[dict[str, Any]] = [{"type": "likelihood", "include_own": True}]


class ScoredResponseParams(ResponseParams):
    scorers: list[dict[str, Any]] = Field(
        default_factory=list,
        description="scorer configs ({type: likelihood|reward_model|prm|embedding|remote, weight, ...}); "
        "empty: likelihood under every selected member, the author's own included",
    )
    normalization: Normalization = Field(
        "center", description="normalisation of each scorer across candidates (center keeps its scale)"
    )

    @field_validator("scorers")
    @classmethod
    def _known_scorers(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        parse_scorer_specs(value)
        return value


def scoring_request(job: LevelJob, records: list[CandidateRecord]) -> ScoringRequest:
    return ScoringRequest(
        prompt=job.request.prompt_input(),
        accepted_text="",
        candidates=[r.candidate.text for r in records],
        authors=[r.member.name for r in records],
        author_load_keys=[r.member.session_key for r in records],
        author_logprobs=[list(r.candidate.token_logprobs) for r in records],
        author_confidence=[list(r.candidate.token_confidence) for r in records],
        author_self_certainty=[list(r.candidate.token_self_certainty) for r in records],
    )


class BestOfNResponseAggregator(ResponseAggregator):
    Params = ScoredResponseParams

    def pick(
        self,
        job: LevelJob,
        members: list[Member],
        records: list[CandidateRecord],
        answers: list[ExtractedAnswer | None],
    ) -> tuple[CandidateRecord, dict[str, Any], str | None, str | None]:
        params = self.params
        assert isinstance(params, ScoredResponseParams)
        scorer = job.build_scorer(params.scorers or DEFAULT_SCORERS)
        scorer.score_round(scoring_request(job, records)).fill(records)
        winner = max(records, key=lambda r: r.score if r.score is not None else float("-inf"))
        return winner, {"scorers": list(scorer.names), "best_score": winner.score}, None, None
