"""Per-token decoding steps every HF decode loop shares: adjusting the logits (vLLM's penalties,
``logit_bias``, EOS held back until ``min_tokens``), choosing the next token (greedy, or a
tempered sample cut by top-k, top-p and min-p) and adding it to a candidate segment (which may
end it)."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Container, Sequence
from dataclasses import dataclass, field

import torch

from ensemble_core.ports import CONFIDENCE_TOP_K, Candidate, Sampling, SegmentLimits
from ensemble_core.segment_text import check_candidate


def top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """``probs`` with everything outside the smallest set of mass ``top_p`` zeroed."""
    if top_p >= 1.0:
        return probs
    ordered, order = torch.sort(probs, descending=True)
    outside = torch.cumsum(ordered, dim=-1) - ordered > top_p
    ordered[outside] = 0.0
    return torch.zeros_like(probs).scatter(0, order, ordered)


def cut_distribution(probs: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """The tempered distribution ``probs`` cut by top-k, top-p and min-p (in vLLM's order);
    the top token always survives."""
    if sampling.top_k > 0 and sampling.top_k < probs.numel():
        kth = torch.topk(probs, sampling.top_k).values[-1]
        probs = torch.where(probs >= kth, probs, torch.zeros_like(probs))
    probs = top_p_filter(probs, sampling.top_p)
    if sampling.min_p > 0:
        floor = sampling.min_p * probs.max()
        probs = torch.where(probs >= floor, probs, torch.zeros_like(probs))
    return probs


def adjust_logits(
    row_logits: torch.Tensor,
    sampling: Sampling,
    *,
    context: Sequence[int] = (),
    output: Sequence[int] = (),
    blocked: Collection[int] = (),
) -> torch.Tensor:
    """The logits a token is chosen from: ``logit_bias`` added, ``repetition_penalty`` over the
    ``context`` (prompt + output, HF's and vLLM's rule: positive logits divided, negative
    multiplied), ``presence_penalty``/``frequency_penalty`` over the ``output`` (OpenAI's
    rule: minus presence once, minus frequency per occurrence), ``blocked`` ids masked."""
    if not sampling.adjusts_logits and not blocked:
        return row_logits
    logits = row_logits.float().clone()
    size = logits.numel()
    for token, bias in sampling.logit_bias:
        if 0 <= token < size:  # an id outside this model's vocabulary means nothing to it
            logits[token] += bias
    if sampling.repetition_penalty != 1.0 and context:
        seen = torch.tensor(sorted(set(context)), dtype=torch.long, device=logits.device)
        values = logits[seen]
        penalty = sampling.repetition_penalty
        logits[seen] = torch.where(values > 0, values / penalty, values * penalty)
    if (sampling.presence_penalty or sampling.frequency_penalty) and output:
        ids, counts = torch.unique(torch.tensor(list(output), dtype=torch.long), return_counts=True)
        ids = ids.to(logits.device)
        logits[ids] -= sampling.frequency_penalty * counts.to(logits) + sampling.presence_penalty
    if blocked:
        ids = [t for t in blocked if 0 <= t < size]
        if ids:
            logits[torch.tensor(ids, dtype=torch.long, device=logits.device)] = -torch.inf
    return logits


def sample_token(row_logits: torch.Tensor, sampling: Sampling, rng: torch.Generator) -> int:
    """Argmax at temperature 0; otherwise a sample from the tempered distribution cut by
    top-k/top-p/min-p, drawn with ``rng`` (the job's seeded generator, so a job replays exactly)."""
    if sampling.temperature <= 0:
        return int(torch.argmax(row_logits))
    probs = cut_distribution(torch.softmax(row_logits.float() / sampling.temperature, dim=-1), sampling)
    return draw(probs.cpu(), rng)


def draw(probs: torch.Tensor, rng: torch.Generator) -> int:
    """One index drawn from the (unnormalized) distribution ``probs`` by inverting its CDF with
    one uniform from ``rng``. ``torch.multinomial`` draws one exponential per vocabulary entry
    (1.7 ms for 49k entries on one CPU thread, 30x this): it was the decode loop's largest cost
    after the forward pass."""
    cdf = torch.cumsum(probs.double(), dim=0)
    point = torch.rand(1, generator=rng, dtype=torch.float64) * cdf[-1]
    index = int(torch.searchsorted(cdf, point, right=True))  # first entry whose CDF passes it
    if index >= probs.numel():  # the uniform rounded onto the total: the last possible entry
        index = int(torch.nonzero(probs).max())
    return index


def choose_token(
    row_logits: torch.Tensor,
    sampling: Sampling,
    rng: torch.Generator,
    limits: SegmentLimits,
    *,
    ends: Collection[int],
    context: Callable[[], Sequence[int]],
    output: Callable[[], Sequence[int]],
    generated: int,
    grammar: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> int:
    """One decode step's token: the logits adjusted (the token histories are only built when a
    penalty needs them), EOS and stop tokens held back before ``limits.eos_after`` tokens, and
    (structured output) every token the ``grammar`` forbids masked. Where the grammar allows
    nothing but the end, the end is not held back."""
    blocked = ends if generated < limits.eos_after else ()
    adjusted = row_logits
    if sampling.adjusts_logits or blocked:
        needs_context = sampling.repetition_penalty != 1.0
        needs_output = bool(sampling.presence_penalty or sampling.frequency_penalty)
        adjusted = adjust_logits(
            row_logits,
            sampling,
            context=context() if needs_context else (),
            output=output() if needs_output else (),
            blocked=blocked,
        )
    if grammar is not None:
        masked = grammar(adjusted)
        if blocked and not bool(torch.isfinite(masked).any()):
            masked = grammar(row_logits)
        adjusted = masked
    return sample_token(adjusted, sampling, rng)


def end_ids(eos_ids: Collection[int], limits: SegmentLimits) -> set[int]:
    """Ids that end the answer: the model's EOS ids and the request's ``stop_token_ids``."""
    return set(eos_ids) | set(limits.stop_token_ids)


@dataclass
class ConfidenceTrail:
    """A candidate's per-token confidence numbers so far (see ``step_confidence``)."""

    confidence: list[float] = field(default_factory=list)
    self_certainty: list[float] = field(default_factory=list)
    top: list[list[tuple[int, float]]] = field(default_factory=list)

    def attach(self, candidate: Candidate) -> Candidate:
        candidate.token_confidence = self.confidence
        candidate.token_self_certainty = self.self_certainty
        candidate.token_top = self.top
        return candidate


def step_top(logprobs: torch.Tensor, k: int) -> list[list[tuple[int, float]]] | None:
    """The ``k`` most likely (token id, log-probability) of each row, or None when ``k`` is 0
    (the request asked for no alternatives: nothing is computed)."""
    if k <= 0:
        return None
    values, indices = logprobs.topk(min(k, logprobs.shape[-1]), dim=-1)
    return [list(zip(i, v, strict=True)) for i, v in zip(indices.tolist(), values.tolist(), strict=True)]


def step_confidence(logprobs: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per row of untempered next-token log-probabilities [rows, vocab]: DeepConf's token
    confidence (minus the mean of the top-``CONFIDENCE_TOP_K`` log-probabilities) and the
    self-certainty KL(uniform || p) = -log V - mean_j log p_j. Two reductions over the
    distribution decoding computed anyway: no extra forward pass."""
    vocab = logprobs.shape[-1]
    k = min(CONFIDENCE_TOP_K, vocab)
    confidence = -logprobs.topk(k, dim=-1).values.mean(dim=-1)
    # masked vocabulary entries are -inf: floor them so one masked id does not make it infinite
    certainty = -logprobs.clamp(min=-1e4).mean(dim=-1) - math.log(vocab)
    return [float(v) for v in confidence], [float(v) for v in certainty]


def extend_candidate(
    ids: list[int],
    logps: list[float],
    token: int,
    logprob: float,
    *,
    limits: SegmentLimits,
    accepted_tail: str,
    eos_ids: Container[int],
    decode: Callable[[list[int]], str],
    trail: ConfidenceTrail | None = None,
    confidence: tuple[float, float] = (math.nan, math.nan),
    top: list[tuple[int, float]] | None = None,
) -> Candidate | None:
    """Add ``token`` to a candidate's ``ids``/``logps`` (and its ``(token confidence,
    self-certainty)`` to ``trail``); return the finished candidate when this token ends the
    segment (EOS or a stop token id, boundary, stop string, length), else None.
    ``ignore_eos`` keeps decoding past the model's EOS but not past a requested stop token."""
    trail = trail if trail is not None else ConfidenceTrail()
    if token in limits.stop_token_ids or (token in eos_ids and not limits.ignore_eos):
        return trail.attach(Candidate(decode(ids), ids, logps, "eos"))
    ids.append(token)
    logps.append(logprob)
    trail.confidence.append(confidence[0])
    trail.self_certainty.append(confidence[1])
    if limits.top_logprobs > 0:
        trail.top.append((top or [])[: limits.top_logprobs])
    text = decode(ids)
    finish, stop = check_candidate(text, len(ids), limits, accepted_tail)
    if finish is None:
        if limits.on_text is not None:
            limits.on_text(text, limits.stop_strings)
        return None
    candidate = trail.attach(Candidate(text, ids, logps, finish))
    if stop is not None:
        candidate.text = text[: stop.keep_chars]
        candidate.stop_string = stop.string
        candidate.trim_accepted = stop.trim_accepted
    return candidate
