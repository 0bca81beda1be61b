"""``majority_vote`` (``aggregation_level: response``): self-consistency over whole answers.

Algorithm: every selected member writes ``samples_per_model`` whole answers; the final answer
of each is extracted (``ensemble_core.answer_extraction``: boxed, ``####``, "the answer is",
last number, last line; numbers and text normalised); the most frequent answer wins (ties: the
answer whose best candidate has the highest mean log-probability under its own model) and the
returned text is that answer's most likely candidate. Candidates without an answer do not
vote; when none has one, the most likely candidate is returned. The summary lists the votes.
Reference: Wang et al., "Self-Consistency Improves Chain of Thought Reasoning in Language
Models" (ICLR 2023); across several models, majority voting as in "More Agents Is All You
Need" (Li et al., 2024).
Parameters: ``samples_per_model``, ``answer_format`` (auto | numeric | text).
Cost: one whole-answer decode per candidate (batched per model); voting is free.
"""

from __future__ import annotations

from typing import Any

from ensemble_core.aggregation.base import CandidateRecord
from ensemble_core.aggregation.level_base import LevelJob
from ensemble_core.aggregation.response_base import ResponseAggregator, best_logprob
from ensemble_core.answer_extraction import ExtractedAnswer, answers_match
from ensemble_core.members import Member


class MajorityVoteResponseAggregator(ResponseAggregator):
    def pick(
        self,
        job: LevelJob,
        members: list[Member],
        records: list[CandidateRecord],
        answers: list[ExtractedAnswer | None],
    ) -> tuple[CandidateRecord, dict[str, Any], str | None, str | None]:
        groups: list[tuple[ExtractedAnswer, list[CandidateRecord]]] = []
        for record, answer in zip(records, answers, strict=True):
            if answer is None:
                continue
            for known, voters in groups:
                if answers_match(known, answer):
                    voters.append(record)
                    break
            else:
                groups.append((answer, [record]))
        votes = {known.normalized: len(voters) for known, voters in groups}
        if not groups:
            return (
                best_logprob(records),
                {"votes": {}, "winning_answer": None, "note": "no candidate had an answer"},
                None,
                None,
            )

        def strength(group: tuple[ExtractedAnswer, list[CandidateRecord]]) -> tuple[int, float]:
            best = best_logprob(group[1])
            return len(group[1]), best.candidate.mean_logprob if best.candidate.token_logprobs else float(
                "-inf"
            )

        answer, voters = max(groups, key=strength)
        winner = best_logprob(voters)
        summary = {
            "votes": votes,
            "winning_answer": answer.normalized,
            "winning_votes": len(voters),
            "candidates": len(records),
            "abstained": sum(1 for a in answers if a is None),
        }
        return winner, summary, None, None
