"""OpenAI's ``echo`` with ``logprobs`` (what lm-evaluation-harness's loglikelihood and
multiple_choice tasks send): the prompt's tokens with their log-probabilities, plus at most one
continued token.

The prompt is scored as the raw text the client sent (``request.prompt``; no chat template),
encoded the way the model encodes a raw prompt (its BOS first where its tokenizer adds one,
listed as the first token, as vLLM does; token ids are scored as given), in the lead member's
tokenization (the first member of the request's ensemble; for ``model: <member>``, that
member). The rule for an ensemble: each token's log-probability is taken from the mean of the
next-token distributions (probabilities, not logs) of every member whose tokenizer has the
lead's vocabulary (members on the same weights count once per member, so their mean is that
model's own); members with another vocabulary cannot score the lead's tokens and are left out
(``trace.echo.members`` names the ones that counted). For one member the numbers are exactly
that model's. Cost: one forward pass over the prompt per distinct set of weights.
"""

from __future__ import annotations

import math
import random
import time
from typing import Any

from ensemble_core.errors import GenerationError
from ensemble_core.members import build_members
from ensemble_core.pool import ModelPool
from ensemble_core.result import EnsembleResult, ModelUsage, Usage
from ensemble_core.spec import EnsembleSpec, GenerationRequest, PromptInput


def echo_prompt(spec: EnsembleSpec, request: GenerationRequest, pool: ModelPool) -> EnsembleResult:
    import torch

    started = time.perf_counter()
    members = build_members(spec.model_specs, request)
    lead = members[0]
    lead_gen = pool.generator(lead.spec)
    if not hasattr(lead_gen, "prompt_logprobs"):
        raise GenerationError(f"{lead.name!r}: echo with logprobs needs the 'hf' engine")
    vocab = lead_gen.tokenizer.get_vocab()  # type: ignore[attr-defined]
    if request.prompt_token_ids is not None:  # token ids (lm-eval with a tokenizer): as given
        ids: list[int] = list(request.prompt_token_ids)
        text = lead_gen.decode(ids, skip_special_tokens=False)  # type: ignore[attr-defined]
    else:
        text = request.prompt if request.prompt is not None else (request.messages or [])[-1].content
        # the model's own encoding of the raw prompt, its BOS included where its tokenizer adds
        # one (Gemma needs it), as vLLM and lm-eval's hf model score it
        rendered = lead_gen.render(PromptInput.raw(text))  # type: ignore[attr-defined]
        ids = lead_gen.encode_prompt(rendered)  # type: ignore[attr-defined]
    if not ids:
        raise GenerationError("echo: the prompt has no tokens")
    by_weights: dict[str, Any] = {}
    counted: list[str] = []
    for member in members:
        generator = pool.generator(member.spec)
        if member.load_key not in by_weights:
            same = generator is lead_gen or (
                hasattr(generator, "prompt_logprobs") and generator.tokenizer.get_vocab() == vocab  # type: ignore[attr-defined]
            )
            by_weights[member.load_key] = generator.prompt_logprobs(ids) if same else None  # type: ignore[attr-defined]
        if by_weights[member.load_key] is not None:
            counted.append(member.name)
    rows = [by_weights[m.load_key] for m in members if by_weights[m.load_key] is not None]
    width = min(r.shape[1] for r in rows)
    mixed = torch.logsumexp(torch.stack([r[:, :width] for r in rows]), dim=0) - math.log(len(rows))
    tokens = list(ids)
    chosen: list[float | None] = [None] + [float(mixed[i - 1, ids[i]]) for i in range(1, len(ids))]
    tops: list[dict[str, float] | None] = [None] + [
        _top(lead_gen, mixed[i - 1], request) for i in range(1, len(ids))
    ]
    if request.echo_tokens:
        nxt = _next_token(mixed[-1], request)
        tokens.append(nxt)
        chosen.append(float(mixed[-1, nxt]))
        tops.append(_top(lead_gen, mixed[-1], request))
    pieces = [lead_gen.decode([t], skip_special_tokens=False) for t in tokens]  # type: ignore[attr-defined]
    offsets, at = [], 0
    for piece in pieces:
        offsets.append(at)
        at += len(piece)
    answer = text + "".join(pieces[len(ids) :])
    usage = Usage(
        prompt_tokens=len(ids),
        completion_tokens=request.echo_tokens,
        per_model={
            name: ModelUsage(prompt=len(ids), prefilled=len(ids), forward_passes=1) for name in counted
        },
    )
    return EnsembleResult(
        text=answer,
        finish_reason="length" if request.echo_tokens else "stop",
        stop_reason="max_tokens",
        selected_models=counted,
        method="echo",
        trace={
            "method": "echo",
            "echo": {"lead": lead.name, "members": counted, "tokens": len(ids)},
            "timings": {"total_s": round(time.perf_counter() - started, 4)},
        },
        usage=usage,
        logprobs={"tokens": pieces, "token_logprobs": chosen, "top_logprobs": tops, "text_offset": offsets},
    )


def _top(generator: Any, row: Any, request: GenerationRequest) -> dict[str, float]:
    import torch

    k = max(request.logprobs or 0, 1)
    values, indices = torch.topk(row, k)
    return {
        generator.decode([int(i)], skip_special_tokens=False): float(v)
        for v, i in zip(values.tolist(), indices.tolist(), strict=True)
    }


def _next_token(row: Any, request: GenerationRequest) -> int:
    """The continued token: greedy at temperature 0 (what lm-eval sends), else a seeded sample."""
    import torch

    temperature = request.temperature if request.temperature is not None else 1.0
    if temperature <= 0:
        return int(torch.argmax(row))
    seed = request.seed if request.seed is not None else random.SystemRandom().randrange(2**31)
    probs = torch.softmax(row / temperature, dim=-1)
    return int(torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(seed)))
