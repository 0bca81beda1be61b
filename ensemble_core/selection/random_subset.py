"""``random``: k members chosen at random, seeded per job.

Algorithm: ``random.Random(job seed).sample(members, k)``, kept in configuration order.
Reference: the random-subset baseline of the upstream toolkit. Cost: no forward pass.
"""

from __future__ import annotations

from pydantic import Field

from ensemble_core.registry import MethodParams
from ensemble_core.selection.base import SelectionContext, SelectionOutcome, Selector


class RandomSubsetParams(MethodParams):
    k: int = Field(2, ge=1, description="how many members to keep (all when there are fewer)")


class RandomSubsetSelector(Selector):
    Params = RandomSubsetParams

    def select(self, ctx: SelectionContext) -> SelectionOutcome:
        assert isinstance(self.params, RandomSubsetParams)
        k = min(self.params.k, len(ctx.members))
        chosen = set(self.rng.sample(range(len(ctx.members)), k))
        selected = [m for i, m in enumerate(ctx.members) if i in chosen]
        return SelectionOutcome(selected=selected, details={"k": k})
