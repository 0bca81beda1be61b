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

# token and response levels run whole answers themselves (see ``level_base``); entries are
# "module:Class" strings, resolved when a config names them
TOKEN_AGGREGATORS = MethodTable(
    "aggregation",
    [
        MethodEntry(
            "gac",
            "ensemble_core.aggregation.token_gac:GaCTokenAggregator",
            "average the models' next-token distributions over a union vocabulary (every token, "
            "or only where the leader is unsure)",
            aliases=("token_average", "distribution_average"),
        ),
    ],
)

RESPONSE_AGGREGATORS = MethodTable(
    "aggregation",
    [
        MethodEntry(
            "majority_vote",
            "ensemble_core.aggregation.response_vote:MajorityVoteResponseAggregator",
            "self-consistency: whole answers vote on their extracted final answer",
            aliases=("self_consistency", "vote"),
        ),
        MethodEntry(
            "best_of_n",
            "ensemble_core.aggregation.response_best_of_n:BestOfNResponseAggregator",
            "the whole answer with the highest scorer score wins",
        ),
        MethodEntry(
            "deepconf_vote",
            "ensemble_core.aggregation.response_confidence_vote:ConfidenceVoteResponseAggregator",
            "DeepConf: the most confident whole answers vote, each weighted by its trace confidence",
            aliases=("confidence_vote",),
        ),
        MethodEntry(
            "cascade",
            "ensemble_core.aggregation.response_cascade:CascadeResponseAggregator",
            "the cheapest member answers; the next runs only when it is unsure or its samples disagree",
            aliases=("agreement_cascade",),
        ),
        MethodEntry(
            "llm_blender",
            "ensemble_core.aggregation.response_blender:LLMBlenderResponseAggregator",
            "pairwise ranking of whole answers by the scorers, optionally fused by a fuser model",
            aliases=("blender",),
        ),
    ],
)

AGGREGATORS_BY_LEVEL: dict[str, MethodTable] = {
    "sentence": SEGMENT_AGGREGATORS,
    "token": TOKEN_AGGREGATORS,
    "response": RESPONSE_AGGREGATORS,
}
# the method of a level when the config names none of that level (e.g. the default
# ensemble_method "simple" with aggregation_level "token")
LEVEL_DEFAULT_METHODS = {"sentence": "reward_based", "token": "gac", "response": "majority_vote"}

LEVELS: dict[str, dict[str, object]] = {
    "sentence": {
        "description": "segment level: models continue one shared answer segment by segment",
        "available": True,
    },
    "token": {
        "description": "token level (GaC-style): next-token distributions averaged over a union vocabulary",
        "available": True,
    },
    "response": {
        "description": "response level: whole answers, then majority vote, best-of-n or pairwise ranking",
        "available": True,
    },
}

__all__ = [
    "AGGREGATORS_BY_LEVEL",
    "LEVELS",
    "LEVEL_DEFAULT_METHODS",
    "RESPONSE_AGGREGATORS",
    "SEGMENT_AGGREGATORS",
    "TOKEN_AGGREGATORS",
]
