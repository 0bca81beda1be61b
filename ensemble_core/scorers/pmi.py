"""PMI scorer: how much more likely the candidate is given the question than without it.

Algorithm: for each scorer model (default: every selected member, authors included),
``pmi = log p(candidate | question, accepted text) - log p(candidate | neutral prompt, accepted
text)``, both totals over the candidate's tokens, divided by its UTF-8 bytes (``unit``). The
conditional term of a model's own candidate is its decoding log-probabilities (free); the
neutral prompt is one user message (``neutral_prompt``, default "Answer:"), so the chat
template and the accepted text are the same in both terms and only the question differs. A
generic candidate ("I am not sure.") is about as likely without the question: PMI near 0. A
candidate that answers this question is much more likely with it. The score is the mean over
the scorer models. (Copying the question also has a high PMI: the copy guard of the
combination vetoes echoes.)
Reference: Holtzman et al., "Surface Form Competition: Why the Highest Probability Answer Isn't
Always Right" (EMNLP 2021, domain-conditional PMI); Li et al., "A Diversity-Promoting Objective
Function for Neural Conversation Models" (NAACL 2016, MMI reranking).
``neutral: question`` keeps the few-shot turns and replaces only the last user message
(domain-conditional PMI: the examples' answer format, e.g. a favourite letter, is as likely
without the question and cancels out).
Parameters: ``models``, ``neutral_prompt``, ``neutral``, ``unit``, ``weight``.
Cost: per scorer model one batched pass over the round's candidates after the neutral prompt
(prompt + accepted text prefilled on a short-lived session), plus one for the conditional
term of candidates the model did not write.
"""

from __future__ import annotations

import functools
import math

from ensemble_core.members import Member
from ensemble_core.ports import ContinuationScore, ScoringRequest
from ensemble_core.scorers.combined import ScorerHost
from ensemble_core.scorers.likelihood import per_unit, scorer_members
from ensemble_core.scorers.specs import PmiScorerSpec
from ensemble_core.spec import ChatMessage, PromptInput


class PmiScorer:
    name = "pmi"

    def __init__(self, spec: PmiScorerSpec, host: ScorerHost) -> None:
        self.spec = spec
        self.host = host
        self._scorers: list[Member] | None = None
        self.neutral_tokens: dict[str, int] = {}

    def _members(self) -> list[Member]:
        if self._scorers is None:
            self._scorers = scorer_members(self.host, self.spec.models)
        return self._scorers

    def _conditional(self, scorer: Member, request: ScoringRequest) -> list[tuple[float, int]]:
        """(total log-probability, tokens) of every candidate given the real prompt."""
        out: list[tuple[float, int] | None] = [None] * len(request.candidates)
        wanted = []
        for i in range(len(request.candidates)):
            own = i < len(request.author_load_keys) and request.author_load_keys[i] == scorer.session_key
            logprobs = request.author_logprobs[i] if i < len(request.author_logprobs) else []
            if own and logprobs:
                out[i] = (sum(logprobs), len(logprobs))
            else:
                wanted.append(i)
        if wanted:
            session = self.host.session(scorer)
            scores = session.score_continuations(
                request.accepted_text, [request.candidates[i] for i in wanted]
            )
            for i, score in zip(wanted, scores, strict=True):
                out[i] = _total(score)
        return [o if o is not None else (math.nan, 0) for o in out]

    def _unconditional(self, scorer: Member, request: ScoringRequest) -> list[tuple[float, int]]:
        generator = self.host.pool.generator(scorer.spec)
        prompt = self._neutral_prompt(request)
        session = generator.open_session(prompt, style=scorer.style, seed=0)
        try:
            scores = session.score_continuations(request.accepted_text, list(request.candidates))
            counters = session.counters
            self.neutral_tokens[scorer.name] = (
                self.neutral_tokens.get(scorer.name, 0) + counters.prefilled + counters.scored
            )
        finally:
            session.close()
        return [_total(s) for s in scores]

    def _neutral_prompt(self, request: ScoringRequest) -> PromptInput:
        """The request's prompt with the question replaced, in the request's form."""
        neutral = self.spec.neutral_prompt
        if not request.prompt.is_chat:
            return PromptInput.raw(neutral)
        messages = list(request.prompt.as_messages())
        last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=None)
        if self.spec.neutral != "question" or last_user is None:
            return PromptInput.chat([ChatMessage(role="user", content=neutral)])
        messages[last_user] = ChatMessage(role="user", content=neutral)
        return PromptInput.chat(messages[: last_user + 1])

    def score(self, request: ScoringRequest) -> list[float]:
        n = len(request.candidates)
        members = self._members()

        def run(scorer: Member) -> list[float]:
            cond = self._conditional(scorer, request)
            uncond = self._unconditional(scorer, request)
            return [
                per_unit(c - u, tokens, text, self.spec.unit)
                for (c, tokens), (u, _), text in zip(cond, uncond, request.candidates, strict=True)
            ]

        rows = self.host.run_parallel([functools.partial(run, m) for m in members])
        values: list[list[float]] = [[] for _ in range(n)]
        for row in rows:
            for i, value in enumerate(row):
                if math.isfinite(value):
                    values[i].append(value)
        return [sum(v) / len(v) if v else math.nan for v in values]

    def prefilled_tokens(self) -> dict[str, int]:
        """Tokens run only for the unconditional term (the conditional one is on job sessions)."""
        return dict(self.neutral_tokens)


def _total(score: ContinuationScore) -> tuple[float, int]:
    if not math.isfinite(score.mean_logprob):
        return math.nan, 0
    return score.mean_logprob * score.tokens, score.tokens
