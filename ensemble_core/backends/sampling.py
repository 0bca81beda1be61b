"""Per-token decoding steps every HF decode loop shares: choosing the next token (greedy, or
tempered top-p sampling) and adding it to a candidate segment (which may end it)."""

from __future__ import annotations

from collections.abc import Callable, Container

import torch

from ensemble_core.ports import Candidate, Sampling, SegmentLimits
from ensemble_core.segment_text import check_candidate


def top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """``probs`` with everything outside the smallest set of mass ``top_p`` zeroed."""
    if top_p >= 1.0:
        return probs
    ordered, order = torch.sort(probs, descending=True)
    outside = torch.cumsum(ordered, dim=-1) - ordered > top_p
    ordered[outside] = 0.0
    return torch.zeros_like(probs).scatter(0, order, ordered)


def sample_token(row_logits: torch.Tensor, sampling: Sampling, rng: torch.Generator) -> int:
    """Argmax at temperature 0; otherwise a sample from the tempered, top-p-cut distribution,
    drawn with ``rng`` (the job's seeded generator, so a job replays exactly)."""
    if sampling.temperature <= 0:
        return int(torch.argmax(row_logits))
    probs = top_p_filter(torch.softmax(row_logits.float() / sampling.temperature, dim=-1), sampling.top_p)
    return int(torch.multinomial(probs.cpu(), 1, generator=rng))


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
) -> Candidate | None:
    """Add ``token`` to a candidate's ``ids``/``logps``; return the finished candidate when this
    token ends the segment (EOS, boundary, stop string, length), else None."""
    if token in eos_ids and not limits.ignore_eos:
        return Candidate(decode(ids), ids, logps, "eos")
    ids.append(token)
    logps.append(logprob)
    text = decode(ids)
    finish, stop = check_candidate(text, len(ids), limits, accepted_tail)
    if finish is None:
        return None
    candidate = Candidate(text, ids, logps, finish)
    if stop is not None:
        candidate.text = text[: stop.keep_chars]
        candidate.stop_string = stop.string
        candidate.trim_accepted = stop.trim_accepted
    return candidate
