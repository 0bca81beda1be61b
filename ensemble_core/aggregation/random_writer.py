"""``random``: a member drawn at random (seeded per job) writes each round's segment.

Algorithm: each round ``rng.choice(members)`` continues the accepted text by one segment.
Reference: the upstream toolkit's random ensemble. Parameters: the shared segment parameters.
Cost: one segment decode per round, like one model alone.
"""

from __future__ import annotations

from ensemble_core.aggregation.base import RoundContext, RoundOutcome, SegmentAggregator


class RandomSegmentAggregator(SegmentAggregator):
    writes_alone = True

    def run_round(self, ctx: RoundContext) -> RoundOutcome:
        writer = self.rng.choice(ctx.members)
        records = ctx.generate([writer])
        return RoundOutcome(winner=records[0], candidates=records)
