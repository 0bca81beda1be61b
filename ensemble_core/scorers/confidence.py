"""Confidence scorers on the author's own decoding: DeepConf trace confidence, self-certainty.

Both read numbers the backend computed while decoding (``Candidate.token_confidence`` and
``Candidate.token_self_certainty``, from the untempered next-token distribution): no forward
pass. Both are a model's opinion of its own text, so they are comparable between samples of one
model and only roughly between models (vocabulary size and calibration differ); across members
prefer cross-model likelihood, PMI or agreement.

``confidence`` (DeepConf): token confidence ``c_t = -(1/k) sum_{j<=k} log p_t(j)`` over the
k = 20 most likely tokens at step t (high when the distribution is peaked); the trace
confidence (``reduce``) is the lowest mean of ``c_t`` over any ``window`` consecutive tokens
(``lowest_window``: one unsure stretch marks a trace as unreliable), or the mean over all
tokens, or the mean of the last window (``tail``: the final answer's stretch). A trace shorter
than the window is one window. Unit: nats.
Reference: Fu et al., "Deep Think with Confidence" (DeepConf, 2025): lowest group confidence.

``self_certainty``: the mean over tokens of KL(U || p_t) = -log V - (1/V) sum_j log p_t(j),
the distance of each step's distribution from uniform. Unit: nats.
Reference: Kang et al., "Scalable Best-of-N Selection for Large Language Models via
Self-Certainty" (2025).
Cost: none (a pass over the stored per-token numbers).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ensemble_core.ports import ScoringRequest
from ensemble_core.scorers.specs import ConfidenceScorerSpec, SelfCertaintyScorerSpec


def trace_confidence(
    token_confidence: Sequence[float], window: int = 16, reduce: str = "lowest_window"
) -> float:
    """DeepConf trace confidence of one candidate (NaN when it has no per-token numbers)."""
    values = [v for v in token_confidence if math.isfinite(v)]
    if not values:
        return math.nan
    if reduce == "mean" or len(values) <= window:
        return sum(values) / len(values)
    if reduce == "tail":
        return _tail(values, window)
    total = sum(values[:window])
    lowest = total
    for i in range(window, len(values)):
        total += values[i] - values[i - window]
        lowest = min(lowest, total)
    return lowest / window


def _tail(values: list[float], window: int) -> float:
    tail = values[-window:]
    return sum(tail) / len(tail)


class ConfidenceScorer:
    name = "confidence"

    def __init__(self, spec: ConfidenceScorerSpec, host: object = None) -> None:
        self.spec = spec

    def score(self, request: ScoringRequest) -> list[float]:
        rows = request.author_confidence or [[] for _ in request.candidates]
        return [trace_confidence(row, self.spec.window, self.spec.reduce) for row in rows]


class SelfCertaintyScorer:
    name = "self_certainty"

    def __init__(self, spec: SelfCertaintyScorerSpec, host: object = None) -> None:
        self.spec = spec

    def score(self, request: ScoringRequest) -> list[float]:
        rows = request.author_self_certainty or [[] for _ in request.candidates]
        return [sum(r) / len(r) if r else math.nan for r in rows]
