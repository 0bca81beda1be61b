"""``zscore``: keep the members that find this prompt most familiar, relative to their habits.

Algorithm: one forward pass of each candidate model over the chat prompt gives its mean
negative log-likelihood (log-perplexity) and mean top-1 probability (confidence). Each number
is z-scored against that model's reference statistics (``reference_stats``, computed by
``calibrate`` from a prompt file: ``ensemblehub calibrate``), or, without statistics, across
the candidates. The combined z is ``confidence_weight * z_conf - perplexity_weight * z_nll``
(low perplexity and high confidence are good). Kept: the ``top_k`` best, or every member with
combined z >= ``threshold``; always at least one. The trace shows every member's numbers.
Reference: the upstream toolkit's z-score selector; perplexity/confidence-based model routing.
Cost: one prefill per distinct set of weights over the prompt (which also fills the KV cache
that the first round reuses, so it costs almost nothing extra).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ensemble_core.ports import PromptStatistics
from ensemble_core.registry import MethodParams
from ensemble_core.selection.base import SelectionContext, SelectionOutcome, Selector
from ensemble_core.spec import ChatMessage, ModelSpec


class MeanStd(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    mean: float
    std: float = Field(ge=0.0)


class ModelReferenceStats(BaseModel):
    """A model's usual numbers over a calibration prompt set."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mean_nll: MeanStd
    mean_top1_prob: MeanStd
    prompts: int = Field(ge=1)


class ZScoreParams(MethodParams):
    top_k: int | None = Field(None, ge=1, description="keep the k best members (overrides threshold)")
    threshold: float = Field(0.0, description="keep members whose combined z is at least this")
    perplexity_weight: float = Field(0.5, ge=0.0)
    confidence_weight: float = Field(0.5, ge=0.0)
    reference_stats: dict[str, ModelReferenceStats] = Field(
        default_factory=dict,
        description="per member name or model path: output of calibrate() / `ensemblehub calibrate`",
    )


def _z(value: float, mean: float, std: float) -> float:
    return (value - mean) / std if std > 1e-12 else 0.0


def reference_statistics(samples: list[PromptStatistics]) -> ModelReferenceStats:
    """Mean and standard deviation of a model's prompt statistics (pure)."""
    if not samples:
        raise ValueError("calibration needs at least one prompt")
    nll = [s.mean_nll for s in samples]
    conf = [s.mean_top1_prob for s in samples]
    return ModelReferenceStats(
        mean_nll=MeanStd(mean=statistics.fmean(nll), std=statistics.pstdev(nll)),
        mean_top1_prob=MeanStd(mean=statistics.fmean(conf), std=statistics.pstdev(conf)),
        prompts=len(samples),
    )


def calibrate(model_specs: list[ModelSpec], prompts: Iterable[str], pool: Any) -> dict[str, Any]:
    """Reference statistics for ``zscore`` from a set of prompts (one user message each).

    Returns ``{model path: ModelReferenceStats as JSON}`` ready to store in
    ``model_selection_params.reference_stats``. Members on the same weights are measured once.
    ``pool`` is a ``ModelPool``. Cost: one prefill per model per prompt.
    """
    prompt_list = [p for p in prompts if p.strip()]
    out: dict[str, Any] = {}
    for spec in model_specs:
        if spec.path in out:
            continue
        generator = pool.generator(spec)
        samples = []
        for prompt in prompt_list:
            session = generator.open_session([ChatMessage(role="user", content=prompt)])
            samples.append(session.prompt_statistics())
            session.close()
        out[spec.path] = reference_statistics(samples).model_dump(mode="json")
    return out


class ZScoreSelector(Selector):
    Params = ZScoreParams

    def select(self, ctx: SelectionContext) -> SelectionOutcome:
        params = self.params
        assert isinstance(params, ZScoreParams)
        stats = {m.name: ctx.session(m).prompt_statistics() for m in ctx.members}
        references = {
            m.name: params.reference_stats.get(m.name) or params.reference_stats.get(m.spec.path)
            for m in ctx.members
        }
        use_reference = all(r is not None for r in references.values())
        nll_all = [s.mean_nll for s in stats.values()]
        conf_all = [s.mean_top1_prob for s in stats.values()]
        details: dict[str, Any] = {"reference": "calibrated" if use_reference else "across_candidates"}
        combined: dict[str, float] = {}
        for member in ctx.members:
            s, ref = stats[member.name], references[member.name]
            if use_reference and ref is not None:
                z_nll = _z(s.mean_nll, ref.mean_nll.mean, ref.mean_nll.std)
                z_conf = _z(s.mean_top1_prob, ref.mean_top1_prob.mean, ref.mean_top1_prob.std)
            else:
                z_nll = _z(s.mean_nll, statistics.fmean(nll_all), statistics.pstdev(nll_all))
                z_conf = _z(s.mean_top1_prob, statistics.fmean(conf_all), statistics.pstdev(conf_all))
            combined[member.name] = params.confidence_weight * z_conf - params.perplexity_weight * z_nll
            details[member.name] = {
                "perplexity": round(s.perplexity, 4) if math.isfinite(s.perplexity) else None,
                "mean_nll": round(s.mean_nll, 4),
                "mean_top1_prob": round(s.mean_top1_prob, 4),
                "z_nll": round(z_nll, 4),
                "z_confidence": round(z_conf, 4),
                "z": round(combined[member.name], 4),
                "prompt_tokens": s.tokens,
            }
        ranked = sorted(ctx.members, key=lambda m: combined[m.name], reverse=True)
        if params.top_k is not None:
            keep = {m.name for m in ranked[: params.top_k]}
        else:
            keep = {m.name for m in ranked if combined[m.name] >= params.threshold} or {ranked[0].name}
        selected = [m for m in ctx.members if m.name in keep]
        return SelectionOutcome(selected=selected, details=details)
