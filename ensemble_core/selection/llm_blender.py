"""``llm_blender``: rank the members by a pairwise tournament over short probe answers.

Algorithm: each member writes a probe answer of ``probe_tokens`` tokens to the prompt; for every
pair of members the configured scorer judges the two probes side by side (one scoring request
per pair) and the higher-scored one wins; members are ranked by wins (ties: by mean score) and
the ``top_k`` are kept. The probes are discarded (counted as ``discarded`` in usage).
Reference: Jiang et al., "LLM-Blender: Ensembling Large Language Models with Pairwise Ranking
and Generative Fusion" (ACL 2023), PairRanker stage; here the pairwise judge is the configured
scorer rather than a trained cross-encoder.
Cost: one probe decode per member (batched per base model) plus n(n-1)/2 two-candidate scorer
calls.
"""

from __future__ import annotations

import itertools
from typing import Any

from pydantic import Field, field_validator

from ensemble_core.members import Member
from ensemble_core.ports import ScoringRequest, SegmentLimits
from ensemble_core.registry import MethodParams
from ensemble_core.scorers.combined import CombinedScorer
from ensemble_core.scorers.specs import parse_scorer_specs
from ensemble_core.selection.base import SelectionContext, SelectionOutcome, Selector


class LLMBlenderParams(MethodParams):
    top_k: int = Field(2, ge=1, description="how many of the best-ranked members to keep")
    probe_tokens: int = Field(32, ge=1, description="length of each member's probe answer")
    scorers: list[dict[str, Any]] = Field(
        default_factory=list, description="the pairwise judge (scorer configs); empty: likelihood"
    )

    @field_validator("scorers")
    @classmethod
    def _known_scorers(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        parse_scorer_specs(value)
        return value


class LLMBlenderSelector(Selector):
    Params = LLMBlenderParams

    def _probes(self, ctx: SelectionContext) -> dict[str, tuple[Member, Any]]:
        params = self.params
        assert isinstance(params, LLMBlenderParams)
        limits = SegmentLimits(max_new_tokens=params.probe_tokens, boundary="none")
        groups: dict[str, list[Member]] = {}
        for member in ctx.members:
            groups.setdefault(member.session_key, []).append(member)
        probes: dict[str, tuple[Member, Any]] = {}
        for group in groups.values():
            candidates = ctx.session(group[0]).generate("", [m.sampling for m in group], limits)
            for member, candidate in zip(group, candidates, strict=True):
                probes[member.name] = (member, candidate)
                ctx.record_discarded(member, candidate.num_tokens)
        return probes

    def select(self, ctx: SelectionContext) -> SelectionOutcome:
        params = self.params
        assert isinstance(params, LLMBlenderParams)
        if len(ctx.members) <= 1:
            return SelectionOutcome(selected=list(ctx.members), details={"note": "single member"})
        probes = self._probes(ctx)
        scorer = ctx.build_scorer(params.scorers)
        assert isinstance(scorer, CombinedScorer)
        wins = {m.name: 0.0 for m in ctx.members}
        score_sum = {m.name: 0.0 for m in ctx.members}
        comparisons: list[dict[str, Any]] = []
        for a, b in itertools.combinations(ctx.members, 2):
            ca, cb = probes[a.name][1], probes[b.name][1]
            request = ScoringRequest(
                prompt=ctx.request.prompt_input(),
                accepted_text="",
                candidates=[ca.text, cb.text],
                authors=[a.name, b.name],
                author_load_keys=[a.session_key, b.session_key],
                author_logprobs=[list(ca.token_logprobs), list(cb.token_logprobs)],
            )
            combined, raw = scorer.score_texts(request)
            sa, sb = combined
            score_sum[a.name] += raw[0][scorer.names[0]]
            score_sum[b.name] += raw[1][scorer.names[0]]
            if sa == sb:
                wins[a.name] += 0.5
                wins[b.name] += 0.5
            else:
                wins[a.name if sa > sb else b.name] += 1
            comparisons.append({"pair": [a.name, b.name], "scores": [round(sa, 4), round(sb, 4)], "raw": raw})
        pairs_each = len(ctx.members) - 1
        ranked = sorted(
            ctx.members, key=lambda m: (wins[m.name], score_sum[m.name] / pairs_each), reverse=True
        )
        keep = {m.name for m in ranked[: params.top_k]}
        details: dict[str, Any] = {
            "ranking": [m.name for m in ranked],
            "wins": wins,
            "comparisons": comparisons,
            "probes": {name: c.text for name, (_, c) in probes.items()},
        }
        return SelectionOutcome(selected=[m for m in ctx.members if m.name in keep], details=details)
