"""Turning the guide's and OpenAI's request forms into one GenerationRequest: chat messages,
or (``raw_prompt``, ``/v1/completions``) a raw text to continue with no chat template."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from api.errors import ApiError
from ensemble_core.spec import ChatMessage, GenerationRequest


def build_generation(
    messages: Sequence[dict[str, Any]] | None,
    *,
    raw_prompt: str | None = None,
    token_ids: list[int] | None = None,
    max_tokens: int,
    temperature: float | None = None,
    top_p: float | None = None,
    stop: list[str] | str | None = None,
    seed: int | None = None,
    **sampling: Any,
) -> GenerationRequest:
    """``sampling``: vLLM's extra sampling fields (``GenerationRequest``'s names), already checked."""
    try:
        return GenerationRequest(
            prompt=raw_prompt,
            prompt_token_ids=token_ids,
            messages=None
            if messages is None
            else [ChatMessage(role=m["role"], content=m["content"]) for m in messages],
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            stop=[stop] if isinstance(stop, str) else list(stop or []),
            seed=seed,
            **sampling,
        )
    except (ValidationError, KeyError) as exc:
        if raw_prompt is not None or token_ids is not None:
            raise ApiError(400, f"invalid prompt: {exc}", code="invalid_prompt", param="prompt") from exc
        raise ApiError(400, f"invalid messages: {exc}", code="invalid_messages", param="messages") from exc


def instruction_messages(instruction: str | None, user_input: str) -> list[dict[str, str]]:
    messages = []
    if instruction:
        messages.append({"role": "system", "content": instruction})
    messages.append({"role": "user", "content": user_input})
    return messages
