"""``cascade`` (alias ``agreement_cascade``, ``aggregation_level: response``): the cheapest
member answers; the others run only when it is unsure.

Algorithm: members answer in ``order`` (member names, cheapest first; default the configured
order), ``samples_per_model`` whole answers per stage. A stage's decision is the DeepConf
confidence-weighted vote of its own samples (see ``deepconf_vote``). The cascade stops at a
stage when (a) its winner's trace confidence (lowest ``window``-token mean of the token
confidence) reaches the stage's threshold, (b) its samples agree on one final answer
(``escalate_on_disagreement``), (c) its winner is not a copy of the prompt, and (d) its winner
says something the question does not (``escalate_on_repeat``: an answer made only of the
question's words, "Poland" for the capital of Poland, is the small models' typical wrong
answer, and it is confidently likely). Otherwise
the next member runs. The last stage always decides. ``signal: logprob`` compares the winner's
own log-probability per byte instead of its trace confidence (on short answers of small models
it separated right from wrong better: see the report in docs/evaluation.md). The answer is the decision of the stage
that stopped (``final: last``) or the weighted vote over every candidate so far (``vote``).
Thresholds: ``min_confidence`` (a trace confidence, one number or per member name), or,
calibrated, ``reference_stats`` (the ``zscore`` format; its ``answer_confidence`` is the
mean/std of the trace confidence of greedy answers to a prompt set, from
``ensemblehub calibrate --answer-tokens N``) with ``min_confidence_z`` (default -0.5: go on
when the answer is half a standard deviation less confident than this member usually is). A
member with neither never stops the cascade on confidence (only its last-stage role ends it).
Reference: the spend-the-big-model-only-when-needed idea of Tandem transformers (Qin et al.,
2024) and of LLM cascades ("FrugalGPT", Chen et al., 2023; "Large Language Model Cascades with
Mixture of Thoughts Representations", Yue et al., 2024: consistency of samples as the
deferral signal); confidence as in DeepConf (Fu et al., 2025).
Parameters: ``order``, ``samples_per_model``, ``signal``, ``min_confidence``, ``reference_stats``,
``min_confidence_z``, ``window``, ``escalate_on_disagreement``, ``escalate_on_repeat``, ``final``, ``answer_format``,
``copy_threshold``.
Cost: the first member's decodes always; each further member's only for escalated prompts.
The summary reports the stages run and why each went on.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from ensemble_core.aggregation.base import CandidateRecord
from ensemble_core.aggregation.level_base import LevelJob
from ensemble_core.aggregation.response_base import (
    ResponseAggregator,
    ResponseParams,
    generate_candidates,
    logprob_per_byte,
)
from ensemble_core.aggregation.response_confidence_vote import confidence_weights, weighted_vote
from ensemble_core.answer_extraction import ExtractedAnswer, extract_answer
from ensemble_core.errors import ConfigError
from ensemble_core.members import Member
from ensemble_core.scorers.copy_guard import CopyGuard, user_sources
from ensemble_core.scorers.novelty import last_user_text, says_something_new
from ensemble_core.selection.zscore import ModelReferenceStats


class CascadeParams(ResponseParams):
    order: list[str] | None = Field(
        None, description="member names, cheapest first (default: configured order)"
    )
    min_confidence: float | dict[str, float] | None = Field(
        None, description="trace confidence a stage needs to stop the cascade (one number or per member)"
    )
    reference_stats: dict[str, ModelReferenceStats] = Field(
        default_factory=dict,
        description="per member name or model path: `ensemblehub calibrate --answer-tokens N` output "
        "(its answer_confidence sets the threshold)",
    )
    min_confidence_z: float = Field(-0.5, description="with reference_stats: the z a stage needs to stop")
    window: int = Field(16, ge=1, description="tokens per sliding window of the trace confidence")
    signal: Literal["confidence", "logprob"] = Field(
        "confidence",
        description="what a stage's threshold compares: DeepConf trace confidence, or the answer's "
        "own log-probability per byte (calibrated: answer_logprob)",
    )
    escalate_on_disagreement: bool = Field(True, description="go on when a stage's samples disagree")
    escalate_on_repeat: bool = Field(
        True,
        description="go on when a stage's answer only repeats words of the question (says nothing new: "
        "'Poland' for the capital of Poland, a number of the word problem, an option letter)",
    )
    final: Literal["last", "vote"] = Field(
        "last", description="last: the stopping stage decides; vote: weighted vote over every candidate"
    )


class CascadeResponseAggregator(ResponseAggregator):
    Params = CascadeParams

    def __init__(self, params: Any, rng: Any) -> None:
        super().__init__(params, rng)
        self.stages: list[dict[str, Any]] = []
        self.stopped: list[CandidateRecord] = []

    def _ordered(self, members: list[Member]) -> list[Member]:
        params = self.params
        assert isinstance(params, CascadeParams)
        if params.order is None:
            return list(members)
        by_name = {m.name: m for m in members}
        unknown = [n for n in params.order if n not in by_name]
        if unknown:
            raise ConfigError(f"cascade order names {unknown}; selected members: {', '.join(by_name)}")
        return [by_name[n] for n in params.order] + [m for m in members if m.name not in params.order]

    def _threshold(self, member: Member) -> tuple[float | None, str]:
        params = self.params
        assert isinstance(params, CascadeParams)
        if isinstance(params.min_confidence, dict):
            if member.name in params.min_confidence:
                return params.min_confidence[member.name], "min_confidence"
        elif params.min_confidence is not None:
            return params.min_confidence, "min_confidence"
        ref = params.reference_stats.get(member.name) or params.reference_stats.get(member.spec.path)
        usual = None
        if ref is not None:
            usual = ref.answer_logprob if params.signal == "logprob" else ref.answer_confidence
        if usual is not None:
            return usual.mean + params.min_confidence_z * usual.std, "calibrated"
        return None, "none"

    def candidates(self, job: LevelJob, members: list[Member]) -> list[CandidateRecord]:
        params = self.params
        assert isinstance(params, CascadeParams)
        guard = CopyGuard(threshold=params.copy_threshold)
        sources = user_sources(job.request.prompt_input().as_messages())
        question = last_user_text(job.request.prompt_input().as_messages())
        everything: list[CandidateRecord] = []
        ordered = self._ordered(members)
        for index, member in enumerate(ordered):
            records = generate_candidates(job, [member], params.samples_per_model, params.ignore_eos)
            for record in records:
                record.copied, record.vetoed = guard.check(record.candidate.text, sources, "")
            everything.extend(records)
            answers = [extract_answer(r.candidate.text, params.answer_format) for r in records]
            weights = confidence_weights(records, params.window)
            winner, vote = weighted_vote(records, answers, weights, 1.0)
            if params.signal == "logprob":
                confidence = logprob_per_byte(winner)
            else:
                confidence = weights[records.index(winner)]
            threshold, source = self._threshold(member)
            reasons = []
            if winner.vetoed:
                reasons.append("copies_prompt")
            elif params.escalate_on_repeat and not says_something_new(winner.candidate.text, question):
                reasons.append("repeats_question")
            if threshold is None:
                reasons.append("no_threshold")
            elif confidence < threshold:
                reasons.append("low_confidence")
            if params.escalate_on_disagreement and len(vote["votes"]) > 1:
                reasons.append("samples_disagree")
            last = index == len(ordered) - 1
            self.stages.append(
                {
                    "member": member.name,
                    "confidence": round(confidence, 4),
                    "threshold": round(threshold, 4) if threshold is not None else None,
                    "threshold_source": source,
                    "answer": vote.get("winning_answer"),
                    "went_on": bool(reasons) and not last,
                    **({"reasons": reasons} if reasons and not last else {}),
                }
            )
            if not reasons or last:
                self.stopped = records
                break
        return everything

    def pick(
        self,
        job: LevelJob,
        members: list[Member],
        records: list[CandidateRecord],
        answers: list[ExtractedAnswer | None],
    ) -> tuple[CandidateRecord, dict[str, Any], str | None, str | None]:
        params = self.params
        assert isinstance(params, CascadeParams)
        weights = confidence_weights(records, params.window, params.reference_stats)
        for record, value in zip(records, weights, strict=True):
            record.raw_scores = {"confidence": value}
        if params.final == "last":
            chosen = {id(r) for r in self.stopped}
            pool = [(r, a, w) for r, a, w in zip(records, answers, weights, strict=True) if id(r) in chosen]
        else:
            pool = list(zip(records, answers, weights, strict=True))
        winner, vote = weighted_vote([p[0] for p in pool], [p[1] for p in pool], [p[2] for p in pool], 1.0)
        summary = {
            "stages": self.stages,
            "stages_run": len(self.stages),
            "decided_by": self.stages[-1]["member"] if self.stages else None,
            "final": params.final,
            **vote,
        }
        return winner, summary, None, None
