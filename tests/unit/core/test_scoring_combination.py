"""How scores become a decision: per-round normalisation, weights, the primary raw score for
thresholds, and which models the likelihood scorer lets judge which candidates."""

from __future__ import annotations

import math

import pytest

from ensemble_core.members import Member
from ensemble_core.ports import ContinuationScore, Sampling, ScoringRequest
from ensemble_core.scorers.combined import CombinedScorer
from ensemble_core.scorers.likelihood import LikelihoodScorer
from ensemble_core.scorers.specs import LikelihoodScorerSpec, RemoteScorerSpec
from ensemble_core.spec import ChatMessage, ModelSpec

MESSAGES = [ChatMessage(role="user", content="q")]


class _Fixed:
    def __init__(self, name: str, values: list[float]) -> None:
        self.name = name
        self.values = values

    def score(self, request: ScoringRequest) -> list[float]:
        return list(self.values)


def _request(n: int) -> ScoringRequest:
    return ScoringRequest(MESSAGES, "", [f"c{i}" for i in range(n)], [f"m{i}" for i in range(n)])


def test_scales_do_not_leak_between_scorers() -> None:
    """A reward logit in the hundreds must not drown a log-probability: after z-scoring each
    scorer within the round, the weights decide."""
    big = _Fixed("reward", [100.0, 300.0])  # prefers candidate 1
    small = _Fixed("likelihood", [-0.5, -2.5])  # prefers candidate 0
    spec_big, spec_small = RemoteScorerSpec(url="x", weight=1.0), RemoteScorerSpec(url="x", weight=2.0)
    combined, raw = CombinedScorer([(spec_big, big), (spec_small, small)], "zscore").score_texts(_request(2))
    assert combined == [pytest.approx(1.0), pytest.approx(-1.0)]  # weight 2 on likelihood wins
    assert raw[1] == {"reward": 300.0, "likelihood": -2.5}
    unnormalised, _ = CombinedScorer([(spec_big, big), (spec_small, small)], "none").score_texts(_request(2))
    assert unnormalised[1] > unnormalised[0]  # raw addition: the big scale dominates


def test_a_single_candidate_keeps_its_primary_raw_score() -> None:
    scorer = CombinedScorer([(RemoteScorerSpec(url="x"), _Fixed("reward", [-3.0]))], "zscore")
    combined, _ = scorer.score_texts(_request(1))
    assert combined == [-3.0]  # so score_threshold still compares a meaningful number


def test_missing_scores_are_neutral() -> None:
    scorer = CombinedScorer([(RemoteScorerSpec(url="x"), _Fixed("lik", [math.nan, -1.0, -3.0]))], "minmax")
    combined, raw = scorer.score_texts(_request(3))
    assert raw[0]["lik"] == -2.0  # the round mean
    assert combined == [0.5, 1.0, 0.0]


class _Session:
    def __init__(self, log: list[tuple[str, list[str]]], name: str) -> None:
        self.log, self.name = log, name

    def score_continuations(self, accepted_text: str, continuations: list[str]) -> list[ContinuationScore]:
        self.log.append((self.name, list(continuations)))
        return [ContinuationScore(-float(len(c)), len(c)) for c in continuations]


class _Host:
    def __init__(self, members: list[Member]) -> None:
        self.members = self.selected = members
        self.pool = None
        self.log: list[tuple[str, list[str]]] = []

    def session(self, member: Member) -> _Session:
        return _Session(self.log, member.name)

    def run_parallel(self, tasks):  # type: ignore[no-untyped-def]
        return [task() for task in tasks]


def _member(i: int, key: str) -> Member:
    return Member(i, f"m{i}", ModelSpec(path=key), key, Sampling())


def test_likelihood_models_never_judge_their_own_candidates_unless_asked() -> None:
    a, b = _member(0, "A"), _member(1, "B")
    host = _Host([a, b])
    request = ScoringRequest(
        MESSAGES, "", ["xx", "yyyy"], ["m0", "m1"], ["A", "B"], [[-0.1, -0.1], [-0.2] * 4]
    )
    scores = LikelihoodScorer(LikelihoodScorerSpec(), host).score(request)  # type: ignore[arg-type]
    assert host.log == [("m0", ["yyyy"]), ("m1", ["xx"])]  # each scores only the other's
    assert scores == [-2.0, -4.0]
    host.log.clear()
    own = LikelihoodScorer(LikelihoodScorerSpec(include_own=True), host).score(request)  # type: ignore[arg-type]
    # own candidates come free from decoding log-probabilities, the other's through a forward
    assert own == [pytest.approx((-0.1 - 2.0) / 2), pytest.approx((-4.0 - 0.2) / 2)]
    assert host.log == [("m0", ["yyyy"]), ("m1", ["xx"])]
    host.log.clear()
    alone = LikelihoodScorer(LikelihoodScorerSpec(include_own=True, include_others=False), host)  # type: ignore[arg-type]
    # each candidate by its author only: free, no forward pass
    assert alone.score(request) == [pytest.approx(-0.1), pytest.approx(-0.2)]
    assert host.log == []


def test_likelihood_with_one_set_of_weights_and_no_own_scores_is_neutral() -> None:
    a, b = _member(0, "A"), _member(1, "A")
    host = _Host([a, b])
    request = ScoringRequest(MESSAGES, "", ["x", "y"], ["m0", "m1"], ["A", "A"], [[-1.0], [-2.0]])
    assert all(math.isnan(s) for s in LikelihoodScorer(LikelihoodScorerSpec(), host).score(request))  # type: ignore[arg-type]
    assert host.log == []
