"""Choosing the next token from one row of logits: greedy, or tempered top-p sampling."""

from __future__ import annotations

import torch

from ensemble_core.ports import Sampling


def sample_token(row_logits: torch.Tensor, sampling: Sampling, rng: torch.Generator) -> int:
    """Argmax at temperature 0; otherwise a sample from the tempered, top-p-cut distribution,
    drawn with ``rng`` (the job's seeded generator, so a job replays exactly)."""
    if sampling.temperature <= 0:
        return int(torch.argmax(row_logits))
    probs = torch.softmax(row_logits.float() / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs > sampling.top_p
        sorted_probs[outside] = 0.0
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return int(torch.multinomial(probs.cpu(), 1, generator=rng))
