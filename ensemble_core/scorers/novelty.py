"""Novelty scorer: an answer that only repeats words of the question says nothing new.

Why: a small model asked "What is the capital of Poland?" often answers "Poland"; asked how
many apples are left, it repeats a number of the question. Such an answer is short (the copy
guard lets one-word answers through, since a right answer may be one of the question's
options) and very likely under every model, so likelihood-style scorers rank it high.

Algorithm: the candidate's words (lower-cased ``\\w+`` runs, minus a few function words) are
compared with the words of the question: the last user message (few-shot turns before it are
examples, not the question; a raw prompt is the question as a whole). Score 1 when the
candidate has at least one word the question does not, else 0 (an empty candidate scores 0).
The combination centres the scores per round, so when every candidate copies (a multiple
choice letter, say) the scorer is neutral, and when one copies and another answers, the
answer gains ``weight`` / 2 over the copy.
Parameters: ``weight``.
Cost: word sets only (no model call).
"""

from __future__ import annotations

from collections.abc import Sequence

from ensemble_core.ports import ScoringRequest
from ensemble_core.scorers.copy_guard import words
from ensemble_core.scorers.specs import NoveltyScorerSpec
from ensemble_core.spec import ChatMessage

# words that carry no answer: an answer "the Poland" is still a copy
_FUNCTION_WORDS = frozenset(
    "a an the is are was were it its of in on at to and or be this that answer".split()
)


def last_user_text(messages: Sequence[ChatMessage]) -> str:
    """The last user message (the question after any few-shot turns), or the raw prompt."""
    users = [m for m in messages if m.role == "user"]
    return str(users[-1].content) if users else ""


def says_something_new(candidate: str, question: str) -> bool:
    asked = set(words(question))
    return any(w not in asked for w in words(candidate) if w not in _FUNCTION_WORDS)


class NoveltyScorer:
    name = "novelty"

    def __init__(self, spec: NoveltyScorerSpec, host: object = None) -> None:
        self.spec = spec

    def score(self, request: ScoringRequest) -> list[float]:
        question = last_user_text(request.messages) + " " + request.accepted_text
        return [1.0 if says_something_new(c, question) else 0.0 for c in request.candidates]
