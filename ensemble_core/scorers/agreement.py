"""Agreement scorer: a candidate that the other candidates agree with is more likely right.

Algorithm: for each candidate, the mean similarity to every other candidate of the round
(``other_authors_only``: only candidates written by other members). Similarity (``mode``):
``answer``, 1 when the extracted final answers match (``ensemble_core.answer_extraction``),
else 0; ``words``, the F1 of the two bags of words; ``auto`` uses answers when both have one,
else words. Unit: a share in [0, 1]. A lone candidate scores 0. Members that differ in weights
are right on different items, so agreement between them is evidence no single model gives.
(Two echoes of the question agree with each other: the copy guard vetoes them.)
Reference: self-consistency (Wang et al., ICLR 2023) as a soft vote; "More Agents Is All You
Need" (Li et al., 2024); the lexical-overlap consensus of minimum-Bayes-risk decoding.
Parameters: ``mode``, ``other_authors_only``, ``weight``.
Cost: string comparisons only (no model call).
"""

from __future__ import annotations

from collections import Counter

from ensemble_core.answer_extraction import ExtractedAnswer, answers_match, extract_answer
from ensemble_core.ports import ScoringRequest
from ensemble_core.scorers.copy_guard import words
from ensemble_core.scorers.specs import AgreementScorerSpec


class AgreementScorer:
    name = "agreement"

    def __init__(self, spec: AgreementScorerSpec, host: object = None) -> None:
        self.spec = spec

    def score(self, request: ScoringRequest) -> list[float]:
        texts = request.candidates
        answers = [extract_answer(t) if self.spec.mode != "words" else None for t in texts]
        bags = [Counter(words(t)) for t in texts]
        authors = (
            request.authors if len(request.authors) == len(texts) else [str(i) for i in range(len(texts))]
        )
        out = []
        for i in range(len(texts)):
            others = [
                j
                for j in range(len(texts))
                if j != i and not (self.spec.other_authors_only and authors[j] == authors[i])
            ]
            if not others:
                out.append(0.0)
                continue
            sims = [self._similarity(answers[i], answers[j], bags[i], bags[j]) for j in others]
            out.append(sum(sims) / len(sims))
        return out

    def _similarity(
        self,
        a: ExtractedAnswer | None,
        b: ExtractedAnswer | None,
        bag_a: Counter[str],
        bag_b: Counter[str],
    ) -> float:
        if self.spec.mode == "answer":
            return 1.0 if a is not None and b is not None and answers_match(a, b) else 0.0
        if self.spec.mode == "auto" and a is not None and b is not None:
            return 1.0 if answers_match(a, b) else 0.0
        return word_f1(bag_a, bag_b)


def word_f1(a: Counter[str], b: Counter[str]) -> float:
    """F1 of two bags of words (0 when either is empty)."""
    common = sum((a & b).values())
    if not common:
        return 0.0
    precision, recall = common / sum(a.values()), common / sum(b.values())
    return 2 * precision * recall / (precision + recall)
