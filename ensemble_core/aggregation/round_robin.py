"""Round robin (``round_robin``, guide alias ``loop``): the members take turns.

Algorithm: in round r the member r mod n continues the accepted text by one segment; nothing is
scored. Reference: the "loop" mode of the upstream Ensemble-Hub toolkit; a turn-taking form of
collaborative decoding. Parameters: the shared segment parameters only.
Cost: one segment decode per round (as one model alone), plus the prefill of the other
members' text when a model's turn comes (cheap with cache reuse).
"""

from __future__ import annotations

from ensemble_core.aggregation.base import RoundContext, RoundOutcome, SegmentAggregator


class RoundRobinSegmentAggregator(SegmentAggregator):
    writes_alone = True

    def run_round(self, ctx: RoundContext) -> RoundOutcome:
        writer = ctx.members[ctx.round % len(ctx.members)]
        records = ctx.generate([writer])
        return RoundOutcome(winner=records[0], candidates=records)
