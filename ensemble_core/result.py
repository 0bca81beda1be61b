"""What a job returns: the answer, why it ended, a JSON-able trace and token usage."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

FinishReason = Literal["stop", "length"]


class SegmentEvent(BaseModel):
    """Text appended to the answer, for streaming: an accepted segment as soon as it is
    accepted or, where one writer decides the text as it is decoded, each token's text as it is
    decoded (``partial``; the segment's accept event then carries only what was not streamed).
    Concatenated in order, the events' texts are the answer."""

    model_config = ConfigDict(frozen=True)

    round: int
    model: str
    text: str
    partial: bool = False


class ModelUsage(BaseModel):
    """Token counts of one model in one job.

    ``prompt``: tokens of the chat prompt in this model's tokenizer; ``generated``: tokens it
    decoded (winners and losers); ``prefilled``: tokens it ran through a prefill forward pass
    (the prompt once, then only what the KV cache did not already hold, plus candidates it read
    only to score them); ``discarded``:
    generated tokens of candidates that lost their round.
    """

    prompt: int = 0
    generated: int = 0
    prefilled: int = 0
    discarded: int = 0
    # forward passes of this model's weights (prefills, decode steps, scoring passes)
    forward_passes: int = 0


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    per_model: dict[str, ModelUsage] = Field(default_factory=dict)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class EnsembleResult(BaseModel):
    """The answer of one job.

    ``finish_reason`` has the OpenAI meaning ("length" when ``max_tokens`` cut the answer,
    "stop" otherwise); ``stop_reason`` says exactly why: ``eos``, ``max_tokens``,
    ``max_rounds``, ``max_context`` (a member's context window was full), ``stop_string``, ``repeat`` (the same segment ``max_repeat`` times),
    ``repeated_ngram`` (a degenerate loop inside the answer) or ``no_candidates``.
    """

    text: str
    finish_reason: FinishReason
    stop_reason: str
    selected_models: list[str]
    method: str
    trace: dict[str, Any] = Field(default_factory=dict)
    usage: Usage = Field(default_factory=Usage)
    # OpenAI's legacy form: tokens, token_logprobs, top_logprobs, text_offset (``echo``)
    logprobs: dict[str, Any] | None = None
