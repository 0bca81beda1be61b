"""``zscore``: keep the members that find this prompt most familiar, relative to their habits.

Algorithm: one forward pass of each candidate model over the chat prompt gives its mean
negative log-likelihood (log-perplexity) and mean top-1 probability (confidence). Each number
is z-scored against that model's reference statistics (``reference_stats``, computed by
``calibrate`` from a prompt file: ``ensemblehub calibrate``), or, without statistics, across
the candidates. The combined z is ``confidence_weight * z_conf - perplexity_weight * z_nll``
(low perplexity and high confidence are good). With ``answer_confidence_weight > 0`` each
distinct set of weights also writes a short greedy probe answer (``probe_tokens``) and its
DeepConf trace confidence (lowest 16-token window mean of the token confidence, see
``ensemble_core.scorers.confidence``) is z-scored the same way (against the calibrated
``answer_confidence`` when every member has one) and added with that weight: the member that
is sure of its answer to *this* prompt is preferred, not just the one that finds the prompt
familiar. Kept: the ``top_k`` best, or every member with combined z >= ``threshold``; always
at least one. The trace shows every member's numbers.
Reference: the upstream toolkit's z-score selector; perplexity/confidence-based model routing;
answer confidence as in DeepConf (Fu et al., 2025).
Parameters: ``top_k``, ``threshold``, ``perplexity_weight``, ``confidence_weight``,
``answer_confidence_weight`` (0), ``probe_tokens`` (16), ``reference_stats``.
Cost: one prefill per distinct set of weights over the prompt (which also fills the KV cache
that the first round reuses, so it costs almost nothing extra); with answer confidence, plus
``probe_tokens`` greedy decode steps per set of weights (counted as discarded).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ensemble_core.ports import PromptStatistics, Sampling, SegmentLimits
from ensemble_core.registry import MethodParams
from ensemble_core.scorers.confidence import trace_confidence
from ensemble_core.selection.base import SelectionContext, SelectionOutcome, Selector
from ensemble_core.spec import ChatMessage, ModelSpec, PromptInput


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
    answer_confidence: MeanStd | None = Field(
        default=None, description="trace confidence of greedy answers (calibrate(..., answer_tokens=N))"
    )
    answer_logprob: MeanStd | None = Field(
        default=None, description="log-probability per byte of greedy answers (same calibration)"
    )


class ZScoreParams(MethodParams):
    top_k: int | None = Field(None, ge=1, description="keep the k best members (overrides threshold)")
    threshold: float = Field(0.0, description="keep members whose combined z is at least this")
    perplexity_weight: float = Field(0.5, ge=0.0)
    confidence_weight: float = Field(0.5, ge=0.0)
    answer_confidence_weight: float = Field(
        0.0, ge=0.0, description="weight of the z-scored confidence of a short greedy probe answer"
    )
    probe_tokens: int = Field(16, ge=1, le=256, description="tokens of the probe answer")
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


def calibrate(
    model_specs: list[ModelSpec], prompts: Iterable[str], pool: Any, *, answer_tokens: int = 0
) -> dict[str, Any]:
    """Reference statistics for ``zscore`` (and ``cascade``) from a set of prompts.

    Returns ``{model path: ModelReferenceStats as JSON}`` ready to store in
    ``model_selection_params.reference_stats``. Members on the same weights are measured once.
    ``pool`` is a ``ModelPool``. With ``answer_tokens > 0`` each model also answers each prompt
    greedily (that many tokens at most) and the trace confidence and log-probability per byte
    of the answers are stored as ``answer_confidence`` and ``answer_logprob``. Cost: one prefill per model per prompt (+ the greedy answers).
    """
    prompt_list = [p for p in prompts if p.strip()]
    out: dict[str, Any] = {}
    for spec in model_specs:
        if spec.path in out:
            continue
        generator = pool.generator(spec)
        samples, confidences, logprobs = [], [], []
        for prompt in prompt_list:
            message = ChatMessage(role="user", content=prompt)
            session = generator.open_session(PromptInput.chat([message]), style=spec.prompt_style())
            samples.append(session.prompt_statistics())
            if answer_tokens > 0:
                confidence, logprob = _probe(session, answer_tokens)
                confidences.append(confidence)
                logprobs.append(logprob)
            session.close()
        stats = reference_statistics(samples)
        known = [c for c in confidences if math.isfinite(c)]
        if known:
            answer = MeanStd(mean=statistics.fmean(known), std=statistics.pstdev(known))
            stats = stats.model_copy(update={"answer_confidence": answer})
        known = [v for v in logprobs if math.isfinite(v)]
        if known:
            per_byte = MeanStd(mean=statistics.fmean(known), std=statistics.pstdev(known))
            stats = stats.model_copy(update={"answer_logprob": per_byte})
        out[spec.path] = stats.model_dump(mode="json", exclude_none=True)
    return out


def _probe(session: Any, tokens: int) -> tuple[float, float]:
    """Trace confidence and log-probability per byte of a greedy answer of at most ``tokens``
    tokens (NaN where the backend gives no numbers)."""
    limits = SegmentLimits(max_new_tokens=tokens, boundary="none")
    candidate = session.generate("", [Sampling(0.0)], limits)[0]
    size = len(candidate.text.encode("utf-8"))
    logprob = sum(candidate.token_logprobs) / size if candidate.token_logprobs and size else math.nan
    return trace_confidence(candidate.token_confidence), logprob


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
        answer_z = self._answer_confidence_z(ctx, references, use_reference, details)
        for member in ctx.members:
            s, ref = stats[member.name], references[member.name]
            if use_reference and ref is not None:
                z_nll = _z(s.mean_nll, ref.mean_nll.mean, ref.mean_nll.std)
                z_conf = _z(s.mean_top1_prob, ref.mean_top1_prob.mean, ref.mean_top1_prob.std)
            else:
                z_nll = _z(s.mean_nll, statistics.fmean(nll_all), statistics.pstdev(nll_all))
                z_conf = _z(s.mean_top1_prob, statistics.fmean(conf_all), statistics.pstdev(conf_all))
            combined[member.name] = params.confidence_weight * z_conf - params.perplexity_weight * z_nll
            if member.name in answer_z:
                combined[member.name] += params.answer_confidence_weight * answer_z[member.name]
            details[member.name] = {
                "perplexity": round(s.perplexity, 4) if math.isfinite(s.perplexity) else None,
                "mean_nll": round(s.mean_nll, 4),
                "mean_top1_prob": round(s.mean_top1_prob, 4),
                "z_nll": round(z_nll, 4),
                "z_confidence": round(z_conf, 4),
                "z": round(combined[member.name], 4),
                "prompt_tokens": s.tokens,
            }
        for name, z in answer_z.items():
            details[name]["z_answer_confidence"] = round(z, 4)
            details[name]["z"] = round(combined[name], 4)
        ranked = sorted(ctx.members, key=lambda m: combined[m.name], reverse=True)
        if params.top_k is not None:
            keep = {m.name for m in ranked[: params.top_k]}
        else:
            keep = {m.name for m in ranked if combined[m.name] >= params.threshold} or {ranked[0].name}
        selected = [m for m in ctx.members if m.name in keep]
        return SelectionOutcome(selected=selected, details=details)

    def _answer_confidence_z(
        self,
        ctx: SelectionContext,
        references: dict[str, ModelReferenceStats | None],
        use_reference: bool,
        details: dict[str, Any],
    ) -> dict[str, float]:
        """Per member: the z-scored trace confidence of a greedy probe answer (one probe per set
        of weights, its tokens counted as discarded); empty when the weight is 0."""
        params = self.params
        assert isinstance(params, ZScoreParams)
        if params.answer_confidence_weight <= 0:
            return {}
        limits = SegmentLimits(max_new_tokens=params.probe_tokens, boundary="none")
        by_weights: dict[str, float] = {}
        values: dict[str, float] = {}
        for member in ctx.members:
            if member.load_key not in by_weights:
                probe = ctx.session(member).generate("", [Sampling(0.0)], limits)[0]
                ctx.record_discarded(member, probe.num_tokens)
                by_weights[member.load_key] = trace_confidence(probe.token_confidence)
            values[member.name] = by_weights[member.load_key]
        finite = [v for v in values.values() if math.isfinite(v)]
        calibrated = use_reference and all(
            r is not None and r.answer_confidence is not None for r in references.values()
        )
        details["answer_confidence_reference"] = "calibrated" if calibrated else "across_candidates"
        out = {}
        for name, value in values.items():
            shown = round(value, 4) if math.isfinite(value) else None
            details.setdefault("answer_confidence", {})[name] = shown
            if not math.isfinite(value):
                out[name] = 0.0
                continue
            ref = references.get(name)
            if calibrated and ref is not None and ref.answer_confidence is not None:
                out[name] = _z(value, ref.answer_confidence.mean, ref.answer_confidence.std)
            else:
                out[name] = _z(value, statistics.fmean(finite), statistics.pstdev(finite))
        return out
