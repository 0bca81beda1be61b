"""Wire bodies of the OpenAI-compatible endpoints (OpenAI's names kept) and of the guide's
prompt-based endpoints that share them (loop, presets)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_N = 8


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class ChatMessageIn(BaseModel):
    """One turn. ``developer`` is OpenAI's newer name for ``system``."""

    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class GenerationFields(BaseModel):
    """Sampling and service fields every generating endpoint accepts."""

    model_config = ConfigDict(extra="forbid")

    max_tokens: int | None = Field(
        default=None, ge=0, description="tokens to generate in total (0 only with echo)"
    )
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = Field(default=None, description="up to 4 stop strings")
    seed: int | None = None
    n: int = Field(default=1, ge=1, le=MAX_N, description="independent answers (choices)")
    stream: bool = False
    stream_options: StreamOptions | None = None
    timeout: float | None = Field(
        default=None, description="seconds to wait before answering 504 with the job id (capped)"
    )
    deadline_s: float | None = Field(
        default=None,
        description="seconds the job may run (from its start on a worker); past it the job stops, "
        "fails with error.code deadline_exceeded and keeps its partial answer. Default and cap: the "
        "server's ENSEMBLEHUB_JOB_DEADLINE_S and ENSEMBLEHUB_MAX_JOB_DEADLINE_S",
    )
    webhook_url: str | None = Field(default=None, description="POSTed a signed event when the job ends")
    background: bool = Field(
        default=False,
        description="submit and return at once (202 with the job id and a Location to poll), as in "
        "OpenAI's background responses; pair with webhook_url to be called back",
    )
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = Field(
        default=None, description="token id (in each member's vocabulary) -> bias from -100 to 100"
    )
    # vLLM's extra sampling fields (send them with the openai SDK's extra_body)
    top_k: int | None = Field(default=None, ge=-1, description="0 or -1: off")
    min_p: float | None = Field(default=None, ge=0, le=1)
    repetition_penalty: float | None = Field(default=None, gt=0, le=10)
    min_tokens: int | None = Field(default=None, ge=0, description="tokens before EOS may end the answer")
    ignore_eos: bool | None = None
    stop_token_ids: list[int] | None = Field(default=None, description="token ids that end the answer")
    include_stop_str_in_output: bool | None = None
    skip_special_tokens: bool | None = None
    # OpenAI fields with no meaning here: accepted and ignored
    user: str | None = Field(default=None, description="accepted for OpenAI compatibility; not used")
    parallel_tool_calls: bool | None = None
    store: bool | None = None
    metadata: dict[str, Any] | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    # completions: logprobs N (0-20); chat: logprobs true + top_logprobs N (0-20)
    logprobs: bool | int | None = Field(
        default=None, description="completions: alternatives per token (0-20); chat: true/false"
    )
    top_logprobs: int | None = Field(default=None, description="chat: alternatives per token (0-20)")
    # completions: logprobs N (0-20); chat: logprobs true + top_logprobs N (0-20)
    logprobs: bool | int | None = Field(
        default=None, description="completions: alternatives per token (0-20); chat: true/false"
    )
    top_logprobs: int | None = Field(default=None, description="chat: alternatives per token (0-20)")
    # structured output: every member's decoding is constrained (``structured_output``)
    tools: list[Any] | None = Field(default=None, description="functions the answer may call (chat only)")
    tool_choice: Any | None = Field(default=None, description="none, auto, required or a named function")
    response_format: dict[str, Any] | None = Field(
        default=None, description="{'type': 'text' | 'json_object' | 'json_schema', 'json_schema': {...}}"
    )
    guided_json: dict[str, Any] | str | None = Field(default=None, description="vLLM's: a JSON schema")
    structured_outputs: dict[str, Any] | None = Field(default=None, description="vLLM's: {'json': schema}")


class PromptFields(GenerationFields):
    """The guide's ``prompt`` form or OpenAI's ``messages`` form (exactly one of them)."""

    model: str = Field(default="ensemble", description="'ensemble', or one member model's name")
    prompt: str | list[str] | list[int] | list[list[int]] | None = Field(
        default=None,
        description="text; a list of texts; or token ids (one list, or a list of them: /v1/completions, one tokenizer)",
    )
    messages: list[ChatMessageIn] | None = None
    ensemble_config: dict[str, Any] | None = None
    # the guide also accepts these beside ensemble_config
    max_rounds: int | None = Field(default=None, ge=1)
    score_threshold: float | None = None


class ChatCompletionRequest(PromptFields):
    """``POST /v1/chat/completions``."""

    # shown in /docs and sent as-is by schemathesis' examples phase
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": "ensemble",
                    "messages": [{"role": "user", "content": "What is 2+2?"}],
                    "max_tokens": 8,
                },
                {"model": "ensemble", "prompt": "What is 2+2?", "max_tokens": 8, "max_rounds": 2},
            ]
        }
    )

    max_completion_tokens: int | None = Field(default=None, ge=1)


class CompletionRequest(PromptFields):
    """``POST /v1/completions`` (OpenAI's legacy completions; ``max_tokens`` defaults to 16 there)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"model": "ensemble", "prompt": "Once upon"}]})

    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None


class LoopRequest(PromptFields):
    """``POST /v1/loop/completions``: round robin over every member model."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"prompt": "Name three colours.", "max_tokens": 8, "max_rounds": 2}]}
    )


class SimplePresetRequest(PromptFields):
    """``POST /v1/ensemble/presets/simple``: model selection plus output aggregation."""

    model_selection_method: str = "all"
    ensemble_method: str = "reward_based"
    aggregation_level: Literal["sentence", "token", "response"] | None = None


class SelectionOnlyPresetRequest(PromptFields):
    """``POST /v1/ensemble/presets/selection_only``: the selected best model answers alone."""

    model_selection_method: str = "zscore"


class AggregationOnlyPresetRequest(PromptFields):
    """``POST /v1/ensemble/presets/aggregation_only``: every model takes part, no selection."""

    aggregation_method: str = "reward_based"
    aggregation_level: Literal["sentence", "token", "response"] = "sentence"


PresetRequest = SimplePresetRequest | SelectionOnlyPresetRequest | AggregationOnlyPresetRequest
