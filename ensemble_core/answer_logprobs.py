"""``logprobs`` of a generated answer (OpenAI's completions ``logprobs`` N, chat
``logprobs``/``top_logprobs``): the answer's tokens, each with its log-probability and the N
most likely alternatives at that step.

The rule, for a member and for an ensemble alike: every token of the answer is given in the
tokenization of the model that wrote it, with the untempered log-probability that model gave
it while decoding (before temperature, top-p or penalties: vLLM's default "raw" logprobs), and
that model's N most likely tokens at the same step; ``models[i]`` names the writer of token
i. For one member this is exactly the model's own distribution over its own tokens. A
segment-level ensemble's answer is the concatenation of its accepted segments, so its tokens
are the winners' tokens, each scored by its writer (no other member is asked: a loser's view
of a token it did not write is not part of the answer). Where no single model wrote the text
verbatim (token-level methods, a fused response-level answer) ``logprobs`` is null and
``trace.logprobs`` says why. Cost: nothing beyond decoding (the top N come from the
distribution decoding computed anyway).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ensemble_core.ports import Candidate

Decode = Callable[[list[int]], str]
# tokens of context before a token when it is decoded alone, so that tokenizers that strip a
# leading space from a lone piece (SentencePiece) still give the piece's own text
_CONTEXT = 4


def answer_logprobs(pieces: list[tuple[str, Candidate, Decode]], top: int) -> dict[str, Any]:
    """The legacy form (``tokens``, ``token_logprobs``, ``top_logprobs``, ``text_offset``, plus
    ``models``) of the answer written by ``pieces``: (writer, accepted candidate, the writer's
    decoder) in order."""
    tokens: list[str] = []
    values: list[float] = []
    tops: list[dict[str, float]] = []
    offsets: list[int] = []
    models: list[str] = []
    at = 0
    for writer, candidate, decode in pieces:
        written = 0  # tokens past the segment's text (a stop string's) are left out
        for j, token in enumerate(candidate.token_ids):
            if written >= len(candidate.text) > 0 or not candidate.text:
                break
            context = candidate.token_ids[max(0, j - _CONTEXT) : j]
            piece = _piece(decode, context, token)
            tokens.append(piece)
            values.append(candidate.token_logprobs[j])
            offsets.append(at)
            models.append(writer)
            alternatives: dict[str, float] = {}
            if top > 0 and j < len(candidate.token_top):
                for alt, value in candidate.token_top[j][:top]:
                    alternatives.setdefault(_piece(decode, context, alt), value)
            tops.append(alternatives)
            at += len(piece)
            written += len(piece)
    return {
        "tokens": tokens,
        "token_logprobs": values,
        "top_logprobs": tops,
        "text_offset": offsets,
        "models": models,
    }


def _piece(decode: Decode, context: list[int], token: int) -> str:
    if not context:
        return decode([token])
    before, after = decode(context), decode([*context, token])
    return after[len(before) :] if after.startswith(before) else decode([token])


def chat_logprobs(legacy: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's chat form of ``answer_logprobs``'s result: ``content = [{token, logprob, bytes,
    top_logprobs: [{token, logprob, bytes}]}]`` (plus ``model``, the token's writer)."""
    content = []
    models = legacy.get("models") or [None] * len(legacy["tokens"])
    for token, value, alternatives, model in zip(
        legacy["tokens"], legacy["token_logprobs"], legacy["top_logprobs"], models, strict=True
    ):
        ranked = sorted((alternatives or {}).items(), key=lambda kv: kv[1], reverse=True)
        content.append(
            {
                "token": token,
                "logprob": value,
                "bytes": list(token.encode("utf-8")),
                "top_logprobs": [
                    {"token": t, "logprob": v, "bytes": list(t.encode("utf-8"))} for t, v in ranked
                ],
                "model": model,
            }
        )
    return {"content": content, "refusal": None}
