"""``all``: every configured member takes part.

Algorithm: none; the baseline. Cost: no forward pass.
"""

from __future__ import annotations

from ensemble_core.selection.base import SelectionContext, SelectionOutcome, Selector


class AllModelsSelector(Selector):
    def select(self, ctx: SelectionContext) -> SelectionOutcome:
        return SelectionOutcome(selected=list(ctx.members))
