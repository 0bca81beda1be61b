"""The copy guard every scorer combination applies: an echo or an empty answer never wins.

Why: copying the question is very likely under every language model and maximally "relevant"
to it, and a copy's conditional likelihood (hence its PMI) is high too, so likelihood-style
scorers reward it. A small base model fed a chat prompt often answers by repeating it.

Algorithm: the candidate's words (lower-cased ``\\w+`` runs) are matched against the word
n-grams (``ngram`` words, default 4) of the sources: the user's messages and the accepted answer
text. ``copied`` is the share of the candidate's words inside some copied n-gram (a candidate
shorter than ``ngram`` words counts when it occurs whole, if it has at least two words; a
one-word answer such as "7" is never a copy, even when the question lists it). A candidate is
*vetoed* when ``copied >= threshold`` or when it says nothing (no word at all) before anything
has been accepted. Vetoed candidates are ranked below every other candidate of the round (among
themselves by their scores); when every candidate is vetoed the ranking is left alone.
Reference: n-gram copy detection as in ROUGE-style overlap; the failure it guards against is
the "echo" answers measured in issue 12.
Cost: a set of n-grams per round; no model call.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def copied_fraction(candidate: str, sources: Sequence[str], ngram: int = 4) -> float:
    """Share of ``candidate``'s words that lie inside an n-gram found in one of ``sources``."""
    cand = words(candidate)
    if not cand:
        return 0.0
    n = min(ngram, len(cand))
    if n < 2:
        return 0.0
    grams: set[tuple[str, ...]] = set()
    for source in sources:
        src = words(source)
        grams.update(tuple(src[i : i + n]) for i in range(len(src) - n + 1))
    covered = [False] * len(cand)
    for i in range(len(cand) - n + 1):
        if tuple(cand[i : i + n]) in grams:
            for j in range(i, i + n):
                covered[j] = True
    return sum(covered) / len(cand)


@dataclass(frozen=True)
class CopyGuard:
    """``threshold``: copied share at which a candidate is vetoed (1.0 vetoes only whole copies;
    above 1.0 turns the guard off)."""

    threshold: float = 0.8
    ngram: int = 4

    def check(self, candidate: str, sources: Sequence[str], accepted_text: str) -> tuple[float, bool]:
        """``(copied share, vetoed)`` for one candidate."""
        if self.threshold > 1.0:
            return 0.0, False
        copied = copied_fraction(candidate, [*sources, accepted_text], self.ngram)
        says_nothing = not words(candidate) and not words(accepted_text)
        return copied, copied >= self.threshold or says_nothing

    def rank_last(self, scores: list[float], vetoed: list[bool]) -> list[float]:
        """``scores`` with every vetoed candidate moved below the lowest kept one (order among
        the vetoed kept); unchanged when none or all are vetoed."""
        kept = [s for s, v in zip(scores, vetoed, strict=True) if not v]
        if not kept or len(kept) == len(scores):
            return list(scores)
        floor = min(kept)
        ceiling = max(s for s, v in zip(scores, vetoed, strict=True) if v)
        shift = max(ceiling - floor, 0.0) + 1.0
        return [s - shift if v else s for s, v in zip(scores, vetoed, strict=True)]


def user_sources(messages: Sequence[object]) -> list[str]:
    """The texts a candidate must not copy: what the user (and the system prompt) wrote."""
    return [str(getattr(m, "content", "")) for m in messages if getattr(m, "role", "") != "assistant"]
