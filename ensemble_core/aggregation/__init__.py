"""Aggregation methods: one table per level (names are public API: add aliases, never rename).

The guide's ``ensemble_method`` names map onto segment-level aggregators: ``simple`` is
``reward_based`` and ``loop`` is ``round_robin``.
"""

from ensemble_core.aggregation.progressive import ProgressiveSegmentAggregator
from ensemble_core.aggregation.random_writer import RandomSegmentAggregator
from ensemble_core.aggregation.reward_based import RewardSegmentAggregator
from ensemble_core.aggregation.round_robin import RoundRobinSegmentAggregator
from ensemble_core.registry import MethodEntry, MethodTable

SEGMENT_AGGREGATORS = MethodTable(
    "aggregation",
    [
        MethodEntry(
            "reward_based",
            RewardSegmentAggregator,
            "every model proposes a segment, the scorers pick the best (resampled below score_threshold)",
            aliases=("simple",),
        ),
        MethodEntry("random", RandomSegmentAggregator, "a random model (seeded per job) writes each segment"),
        MethodEntry(
            "round_robin",
            RoundRobinSegmentAggregator,
            "the selected models take turns, one segment each",
            aliases=("loop",),
        ),
        MethodEntry(
            "progressive",
            ProgressiveSegmentAggregator,
            "models write in order, handing over at length thresholds and/or special tokens",
        ),
    ],
)

LEVELS: dict[str, dict[str, object]] = {
    "sentence": {
        "description": "segment level: models continue one shared answer segment by segment",
        "available": True,
    },
    "token": {
        "description": "token level (GaC-style distribution averaging); planned, not in this build",
        "available": False,
    },
    "response": {
        "description": "response level (voting, best-of-n); planned, not in this build",
        "available": False,
    },
}

__all__ = ["LEVELS", "SEGMENT_AGGREGATORS"]
