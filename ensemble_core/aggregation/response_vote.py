"""``majority_vote`` (``aggregation_level: response``): self-consistency over whole answers.

Algorithm: every selected member writes ``samples_per_model`` whole answers; the final answer
of each is extracted (``ensemble_core.answer_extraction``: boxed, ``####``, "the answer is",
last number, last line; numbers and text normalised); the most frequent answer wins and the
returned text is that answer's most likely candidate. Candidates that copy the prompt
(``copy_threshold``; an echo of "What is 2+3?" would vote "3") and candidates without an answer
do not vote; when none is left, the most likely candidate is returned. Ties: the answer whose
best candidate has the highest log-probability per byte under its own model (per byte, not
per token: one scale for every tokenizer). The summary lists the votes.
Reference: Wang et al., "Self-Consistency Improves Chain of Thought Reasoning in Language
Models" (ICLR 2023); across several models, majority voting as in "More Agents Is All You
Need" (Li et al., 2024).
Parameters: ``samples_per_model``, ``answer_format`` (auto | numeric | text), ``copy_threshold``.
Cost: one whole-answer decode per candidate (batched per model); voting is free.
"""

from __future__ import annotations

from typing import Any

from ensemble_core.aggregation.base import CandidateRecord
from ensemble_core.aggregation.level_base import LevelJob
from ensemble_core.aggregation.response_base import (
    ResponseAggregator,
    best_logprob,
    logprob_per_byte,
    voters,
)
from ensemble_core.answer_extraction import ExtractedAnswer, answers_match
from ensemble_core.members import Member

AnswerGroup = tuple[ExtractedAnswer, list[CandidateRecord]]


def group_by_answer(
    records: list[CandidateRecord], answers: list[ExtractedAnswer | None]
) -> list[AnswerGroup]:
    """The voting candidates (no echo, an answer) grouped by matching final answer."""
    allowed = {id(r) for r in voters(records)}
    groups: list[AnswerGroup] = []
    for record, answer in zip(records, answers, strict=True):
        if answer is None or id(record) not in allowed:
            continue
        for known, members in groups:
            if answers_match(known, answer):
                members.append(record)
                break
        else:
            groups.append((answer, [record]))
    return groups


class MajorityVoteResponseAggregator(ResponseAggregator):
    def pick(
        self,
        job: LevelJob,
        members: list[Member],
        records: list[CandidateRecord],
        answers: list[ExtractedAnswer | None],
    ) -> tuple[CandidateRecord, dict[str, Any], str | None, str | None]:
        groups = group_by_answer(records, answers)
        votes = {known.normalized: len(group) for known, group in groups}
        if not groups:
            return (
                best_logprob(records),
                {"votes": {}, "winning_answer": None, "note": "no candidate had an answer"},
                None,
                None,
            )

        def strength(group: AnswerGroup) -> tuple[int, float]:
            return len(group[1]), logprob_per_byte(best_logprob(group[1]))

        answer, group = max(groups, key=strength)
        winner = best_logprob(group)
        summary = {
            "votes": votes,
            "winning_answer": answer.normalized,
            "winning_votes": len(group),
            "candidates": len(records),
            "abstained": sum(1 for a in answers if a is None),
            "copies": sum(1 for r in records if r.vetoed),
        }
        return winner, summary, None, None
