"""What the response-level methods share: whole candidate answers, their trace, the outcome.

Each selected member writes ``samples_per_model`` whole answers to the prompt (members on the
same weights are decoded in one batch, different models concurrently); a method then picks
one (``majority_vote``, ``best_of_n``, ``llm_blender``, ``deepconf_vote``, ``cascade``). The
copy guard marks every candidate that copies the prompt (``copy_threshold``): it neither votes
nor wins while another candidate does not copy. Every candidate is in the trace with its
extracted final answer and, where the method scores, its score.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from pydantic import Field

from ensemble_core.aggregation.base import CandidateRecord
from ensemble_core.aggregation.level_base import LevelAggregator, LevelJob, LevelOutcome, LevelParams
from ensemble_core.answer_extraction import AnswerFormat, ExtractedAnswer, extract_answer
from ensemble_core.members import Member, segment_limits
from ensemble_core.result import SegmentEvent
from ensemble_core.scorers.copy_guard import CopyGuard, user_sources

_STOP_REASONS = {
    "eos": "eos",
    "length": "max_tokens",
    "stop_string": "stop_string",
    "context_full": "max_context",
}


class ResponseParams(LevelParams):
    samples_per_model: int = Field(
        1, ge=1, le=64, description="whole answers per selected member (several: self-consistency sampling)"
    )
    ignore_eos: bool = Field(False, description="benchmarks only: every answer runs to max_tokens")
    answer_format: AnswerFormat = Field(
        "auto", description="final-answer extraction: auto (number, choice or text), numeric, or text"
    )
    copy_threshold: float = Field(
        0.8,
        ge=0.0,
        description="copy guard: a candidate whose words are this share copied from the prompt "
        "neither votes nor wins while another candidate does not copy (above 1: off)",
    )


def generate_candidates(
    job: LevelJob, members: list[Member], samples: int, ignore_eos: bool = False
) -> list[CandidateRecord]:
    """``samples`` whole answers per member, batched per set of weights; usage is counted."""
    request = job.request
    limits = segment_limits(
        request, max_new_tokens=request.max_tokens, boundary="none", ignore_eos=ignore_eos
    )
    groups: dict[str, list[Member]] = {}
    for member in members:
        groups.setdefault(member.session_key, []).append(member)

    def decode(group: list[Member]) -> list[CandidateRecord]:
        rows = [m for m in group for _ in range(samples)]
        candidates = job.session(group[0]).generate("", [m.sampling for m in rows], limits)
        return [
            CandidateRecord(member, candidate, attempt=i % samples)
            for i, (member, candidate) in enumerate(zip(rows, candidates, strict=True))
        ]

    tasks: list[Callable[[], list[CandidateRecord]]] = [lambda g=g: decode(g) for g in groups.values()]  # type: ignore[misc]
    batches = job.run_parallel(tasks)
    order = {m.name: i for i, m in enumerate(members)}
    records = sorted((r for batch in batches for r in batch), key=lambda r: (order[r.member.name], r.attempt))
    for record in records:
        eos = 1 if record.candidate.finish == "eos" else 0
        job.member_usage(record.member.name).generated += record.candidate.num_tokens + eos
    return records


class ResponseAggregator(LevelAggregator):
    """Generate the candidates, let the method pick, report every candidate."""

    Params: ClassVar[type[LevelParams]] = ResponseParams
    level = "response"

    def run(self, job: LevelJob, members: list[Member]) -> LevelOutcome:
        params = self.params
        assert isinstance(params, ResponseParams)
        records = self.candidates(job, members)
        guard = CopyGuard(threshold=params.copy_threshold)
        sources = user_sources(job.request.prompt_input().as_messages())
        for record in records:
            record.copied, record.vetoed = guard.check(record.candidate.text, sources, "")
        answers = [extract_answer(r.candidate.text, params.answer_format) for r in records]
        winner, summary, final_text, final_finish = self.pick(job, members, records, answers)
        for record in records:
            if record is not winner:
                job.record_discarded(record.member, record.candidate.num_tokens)
        text = final_text if final_text is not None else winner.candidate.text
        finish = final_finish or winner.candidate.finish
        if job.on_segment is not None and text:
            job.on_segment(
                SegmentEvent(round=0, model=summary.get("written_by", winner.member.name), text=text)
            )
        if params.samples_per_model > 1 and any(m.sampling.temperature <= 0 for m in members):
            summary["note"] = "greedy members write the same answer every sample"
        round_trace = {
            "round": 0,
            "winner": winner.member.name,
            "winner_index": records.index(winner),
            "accepted": True,
            "candidates": [_candidate_row(r, a) for r, a in zip(records, answers, strict=True)],
        }
        generated = winner.candidate.num_tokens if final_text is None else int(summary.get("fused_tokens", 0))
        return LevelOutcome(
            text=text,
            stop_reason=_STOP_REASONS.get(finish, "eos"),
            generated_tokens=generated,
            trace=[round_trace],
            summary=summary,
            pieces=[(winner.member, winner.candidate)] if final_text is None else [],
        )

    def candidates(self, job: LevelJob, members: list[Member]) -> list[CandidateRecord]:
        """The whole answers the method chooses from (default: every member, at once)."""
        params = self.params
        assert isinstance(params, ResponseParams)
        return generate_candidates(job, members, params.samples_per_model, params.ignore_eos)

    def pick(
        self,
        job: LevelJob,
        members: list[Member],
        records: list[CandidateRecord],
        answers: list[ExtractedAnswer | None],
    ) -> tuple[CandidateRecord, dict[str, Any], str | None, str | None]:
        """The winning candidate, the method's summary, and a replacement text (fusion) with its finish."""
        raise NotImplementedError


def _candidate_row(record: CandidateRecord, answer: ExtractedAnswer | None) -> dict[str, Any]:
    row = record.to_trace()
    row["sample"] = row.pop("attempt", 0)
    row["answer"] = answer.normalized if answer is not None else None
    row["answer_raw"] = answer.raw if answer is not None else None
    return row


def logprob_per_byte(record: CandidateRecord) -> float:
    """Its own model's total log-probability per UTF-8 byte (comparable across tokenizers)."""
    candidate = record.candidate
    if not candidate.token_logprobs:
        return float("-inf")
    return sum(candidate.token_logprobs) / max(len(candidate.text.encode("utf-8")), 1)


def best_logprob(records: list[CandidateRecord]) -> CandidateRecord:
    """The candidate its own model found most likely per byte, echoes of the prompt last."""
    return max(records, key=lambda r: (not r.vetoed, logprob_per_byte(r)))


def voters(records: list[CandidateRecord]) -> list[CandidateRecord]:
    """The candidates allowed to vote: all but the echoes, unless every candidate is one."""
    kept = [r for r in records if not r.vetoed]
    return kept or list(records)
