"""``progressive``: the members write in order, handing over at lengths or special tokens.

Algorithm: the selected members form a sequence; member i writes until the hand-over to
member i+1 (the last one writes to the end). ``progressive_mode``:
- ``length``: hand over when the answer's generated tokens reach the next of
  ``length_thresholds`` (a segment is cut exactly at the threshold); default thresholds split
  ``max_tokens`` evenly between the members;
- ``token``: each occurrence of one of ``special_tokens`` (e.g. ``</think>``) in the answer
  moves to the next member (a segment ends right after the token);
- ``mixed``: whichever comes first: the stage is the larger of the two counts.
Reference: the upstream toolkit's progressive ensemble (e.g. a large model reasons, a small
model finishes). Cost: one segment decode per round, like one model alone.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

from pydantic import Field, field_validator

from ensemble_core.aggregation.base import RoundContext, RoundOutcome, SegmentAggregator, SegmentParams


class ProgressiveParams(SegmentParams):
    progressive_mode: Literal["length", "token", "mixed"] = "mixed"
    length_thresholds: list[int] = Field(
        default_factory=list, description="generated-token counts at which the next member takes over"
    )
    special_tokens: list[str] = Field(
        default_factory=list, description="strings whose every occurrence moves to the next member"
    )

    @field_validator("length_thresholds")
    @classmethod
    def _ascending(cls, v: list[int]) -> list[int]:
        if any(b <= a for a, b in zip(v, v[1:], strict=False)) or any(x <= 0 for x in v):
            raise ValueError("length_thresholds must be positive and strictly ascending")
        return v


class ProgressiveSegmentAggregator(SegmentAggregator):
    Params = ProgressiveParams

    def _thresholds(self, ctx: RoundContext, n: int) -> list[int]:
        assert isinstance(self.params, ProgressiveParams)
        if self.params.length_thresholds:
            return list(self.params.length_thresholds)
        return [max(1, ctx.max_tokens * (i + 1) // n) for i in range(n - 1)]

    writes_alone = True

    def run_round(self, ctx: RoundContext) -> RoundOutcome:
        params = self.params
        assert isinstance(params, ProgressiveParams)
        n = len(ctx.members)
        use_length = params.progressive_mode in ("length", "mixed")
        use_tokens = params.progressive_mode in ("token", "mixed") and bool(params.special_tokens)
        thresholds = self._thresholds(ctx, n) if use_length else []
        length_stage = sum(1 for t in thresholds if ctx.generated_tokens >= t)
        token_stage = sum(ctx.accepted_text.count(s) for s in params.special_tokens if s) if use_tokens else 0
        stage = min(max(length_stage, token_stage), n - 1)
        limits = ctx.limits
        upcoming = [t for t in thresholds if t > ctx.generated_tokens]
        if upcoming and stage < n - 1:
            limits = replace(
                limits, max_new_tokens=min(limits.max_new_tokens, upcoming[0] - ctx.generated_tokens)
            )
        if use_tokens:
            limits = replace(limits, boundary_strings=tuple(s for s in params.special_tokens if s))
        writer = ctx.members[stage]
        records = ctx.generate([writer], limits)
        notes = {"stage": stage, "length_stage": length_stage, "token_stage": token_stage}
        return RoundOutcome(winner=records[0], candidates=records, notes=notes)
