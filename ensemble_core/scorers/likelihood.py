"""Language-model likelihood scorer: log-probability of a candidate under scorer models.

Algorithm: for each candidate, every scorer model (default: the job's selected members; or the
named members / extra model paths) gives the total log-probability of the candidate after the
prompt and the accepted text, divided by the candidate's length in UTF-8 bytes (``unit:
byte``, the default: nats per byte, one scale for models with different tokenizers; ``char``
per character; ``token`` the per-token mean, which is not comparable across tokenizers);
the candidate's score is the mean over its scorers. A model never scores a candidate written
on its own weights unless ``include_own`` is set (cross-model likelihood: the author's own
opinion of its text is self-preference); then the score is the generator's own decoding
log-probabilities, which cost nothing. A candidate left with no eligible scorer gets the
round's mean (neutral).
Reference: likelihood / self-certainty reranking (e.g. "Scalable Best-of-N Selection for LLMs via
Self-Certainty", Kang et al., 2025) and the upstream toolkit's PPL scorer; bits-per-byte as the
tokenizer-free scale of language-model evaluation (e.g. The Pile, Gao et al., 2020).
Parameters: ``models``, ``include_own``, ``include_others`` (False with ``include_own``: every
candidate by its own author only, per byte, so no forward pass at all), ``unit``, ``weight``.
Cost: one batched forward pass per scorer model over the round's candidates, with the shared
prefix taken from that model's KV cache; zero for own-weights scores.
"""

from __future__ import annotations

import functools
import math

from ensemble_core.members import Member
from ensemble_core.ports import ContinuationScore, Sampling, ScoringRequest
from ensemble_core.scorers.combined import ScorerHost
from ensemble_core.scorers.specs import LikelihoodScorerSpec, LikelihoodUnit
from ensemble_core.spec import ModelSpec


class LikelihoodScorer:
    name = "likelihood"

    def __init__(self, spec: LikelihoodScorerSpec, host: ScorerHost) -> None:
        self.spec = spec
        self.host = host
        self._scorers: list[Member] | None = None

    def _scorer_members(self) -> list[Member]:
        if self._scorers is None:
            self._scorers = scorer_members(self.host, self.spec.models)
        return self._scorers

    def score(self, request: ScoringRequest) -> list[float]:
        n = len(request.candidates)
        unit = self.spec.unit
        values: list[list[float]] = [[] for _ in range(n)]
        forward: list[tuple[Member, list[int]]] = []  # scorer models that need a forward pass
        for scorer in self._scorer_members():
            wanted: list[int] = []
            for i in range(n):
                own = i < len(request.author_load_keys) and request.author_load_keys[i] == scorer.session_key
                if (own and not self.spec.include_own) or (not own and not self.spec.include_others):
                    continue
                logprobs = request.author_logprobs[i] if i < len(request.author_logprobs) else []
                if own and logprobs:
                    values[i].append(per_unit(sum(logprobs), len(logprobs), request.candidates[i], unit))
                elif request.candidates[i]:
                    wanted.append(i)
                # an empty candidate (an answer that ended at once) has no token to score: a
                # forward pass would give it no value either, so it stays neutral for free
            if wanted:
                forward.append((scorer, wanted))

        def run(scorer: Member, wanted: list[int]) -> list[ContinuationScore]:
            session = self.host.session(scorer)
            return session.score_continuations(request.accepted_text, [request.candidates[i] for i in wanted])

        # different scorer models score concurrently (each on its own cached prefix)
        results = self.host.run_parallel([functools.partial(run, s, w) for s, w in forward])
        for (_, wanted), scores in zip(forward, results, strict=True):
            for i, result in zip(wanted, scores, strict=True):
                if math.isfinite(result.mean_logprob):
                    total = result.mean_logprob * result.tokens
                    values[i].append(per_unit(total, result.tokens, request.candidates[i], unit))
        return [sum(v) / len(v) if v else math.nan for v in values]


def per_unit(total_logprob: float, tokens: int, text: str, unit: LikelihoodUnit) -> float:
    """A total log-probability per byte, character or token of ``text``."""
    if unit == "token":
        size = tokens
    elif unit == "char":
        size = len(text)
    else:
        size = len(text.encode("utf-8"))
    return total_logprob / max(size, 1)


def scorer_members(host: ScorerHost, models: list[str] | None) -> list[Member]:
    """The models that score: the selected members, or the named members / model paths (a path
    that is no member is loaded as an extra scorer); one per set of weights."""
    pool = getattr(host, "selected", None) or host.members
    if models is None:
        chosen = list(pool)
    else:
        by_name = {m.name: m for m in host.members}
        chosen = []
        for name in models:
            if name in by_name:
                chosen.append(by_name[name])
            else:
                extra = ModelSpec(path=name)
                chosen.append(Member(-1, extra.display_name, extra, extra.load_key(), Sampling()))
    unique: dict[str, Member] = {}
    for member in chosen:
        unique.setdefault(member.session_key, member)
    return list(unique.values())
