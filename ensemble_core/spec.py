"""Domain values of an ensemble: which models, which methods, one request.

These are pure pydantic models (frozen, ``extra="forbid"``) so that a typo in a
configuration fails when it is validated, not in the middle of a job. They are
stored as JSON in config versions, so field names are public API: add, never rename.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ensemble_core.structured_output import StructuredOutput

Engine = Literal["hf", "vllm", "openai"]
Quantization = Literal["8bit", "4bit"]
PromptFormat = Literal["chat", "raw"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelSpec(_Frozen):
    """One generator (or scorer) model.

    ``path`` is a local folder, a GGUF file, a hub id (fails offline) or the
    special name ``bundled:smollm2`` / ``bundled:gemma3-270m``. ``name`` is how the model
    appears in traces; it defaults to the last path component. ``temperature`` and
    ``top_p`` are this member's sampling defaults: two members may share one set of
    weights (same load key) and differ only here.
    """

    path: str
    engine: Engine = "hf"
    device: str = "cpu"
    name: str | None = None
    quantization: Quantization | None = None
    engine_options: dict[str, Any] = Field(default_factory=dict)
    temperature: float | None = None
    top_p: float | None = None
    # how this member takes a chat request (a raw completion prompt is always sent as is):
    # "chat" through its chat template (``chat_template`` overrides the tokenizer's), "raw"
    # rendered to plain text by ``raw_template`` (a Jinja template over ``messages``; None: a
    # "Question: ... / Answer:" default, see ``ensemble_core.prompting``) for base models, with
    # ``raw_stop`` ending its answer where it would start a new turn (None: the default's)
    prompt_format: PromptFormat = "chat"
    chat_template: str | None = None
    raw_template: str | None = None
    raw_stop: list[str] | None = None

    def prompt_style(self) -> PromptStyle:
        return PromptStyle(
            format=self.prompt_format,
            chat_template=self.chat_template,
            raw_template=self.raw_template,
            raw_stop=None if self.raw_stop is None else tuple(self.raw_stop),
        )

    @property
    def display_name(self) -> str:
        if self.name:
            return self.name
        return self.path.rstrip("/").split("/")[-1].split(":")[-1]

    def load_key(self) -> str:
        """Identity of the loaded weights: members differing only in sampling share it."""
        payload = {
            "path": self.path,
            "engine": self.engine,
            "device": self.device,
            "quantization": self.quantization,
            "engine_options": self.engine_options,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        """Parse the guide's ``path:engine:device`` form; the device may be ``cuda:1``."""
        parts = text.strip().split(":")
        if len(parts) == 1:
            return cls(path=parts[0])
        engines = {"hf", "vllm", "openai"}
        # the engine is the first component after the path that names an engine, so a
        # path with a colon (bundled:smollm2) still parses
        for i in range(1, len(parts)):
            if parts[i] in engines:
                path = ":".join(parts[:i])
                device = ":".join(parts[i + 1 :]) or "cpu"
                return cls(path=path, engine=parts[i], device=device)  # type: ignore[arg-type]
        return cls(path=text.strip())


class EnsembleConfig(_Frozen):
    """How the members write one answer: every field of the user's guide."""

    model_selection_method: str = "zscore"
    ensemble_method: str = "simple"
    aggregation_method: str | None = None
    aggregation_level: Literal["sentence", "token", "response"] = "sentence"
    progressive_mode: Literal["length", "token", "mixed"] = "mixed"
    length_thresholds: list[int] = Field(default_factory=list)
    special_tokens: list[str] = Field(default_factory=list)
    max_rounds: int = Field(default=10, ge=1)
    score_threshold: float | None = -1.5
    max_repeat: int = Field(default=3, ge=1)
    use_model_selection: bool = True
    use_output_aggregation: bool = True
    model_selection_params: dict[str, Any] = Field(default_factory=dict)
    aggregation_params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("length_thresholds")
    @classmethod
    def _ascending(cls, v: list[int]) -> list[int]:
        if any(b <= a for a, b in zip(v, v[1:], strict=False)) or any(x <= 0 for x in v):
            raise ValueError("length_thresholds must be positive and strictly ascending")
        return v


class EnsembleSpec(_Frozen):
    """What a config version stores: the member models, the default ensemble config, and the
    named scorers and fusers a request may use by name (``"scorers": ["quality_rm"]``,
    ``"fuser": "big_fuser"``); see ``ensemble_core.references``. Naming them here keeps what
    loads weights or calls a URL in the admin's hands while requests pick among them."""

    model_specs: list[ModelSpec] = Field(min_length=1)
    default_ensemble_config: EnsembleConfig = Field(default_factory=EnsembleConfig)
    scorers: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="named scorer configs (the items of `scorers`)"
    )
    fusers: dict[str, ModelSpec] = Field(default_factory=dict, description="named fuser models")

    def content_hash(self) -> str:
        # the named parts are left out while empty, so versions stored before they existed
        # keep their hash (a restart with the same flags appends no new version)
        data = self.model_dump(
            mode="json", exclude={k for k in ("scorers", "fusers") if not getattr(self, k)}
        )
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


class ChatMessage(_Frozen):
    role: Literal["system", "user", "assistant"]
    content: str


class PromptStyle(_Frozen):
    """How one member turns a chat prompt into its model's input (from its ``ModelSpec``)."""

    format: PromptFormat = "chat"
    chat_template: str | None = None
    raw_template: str | None = None
    raw_stop: tuple[str, ...] | None = None

    def key(self) -> str:
        """Empty for the default style, so default members keep their plain session keys."""
        if self == PromptStyle():
            return ""
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[
            :8
        ]


class PromptInput(_Frozen):
    """What a session continues: raw ``text`` (a completion, no template), chat ``messages``,
    or ``token_ids`` (a completion given as ids of the members' one tokenizer, used as they are)."""

    text: str | None = None
    messages: list[ChatMessage] | None = None
    token_ids: list[int] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> PromptInput:
        _check_one_prompt(self.text, self.messages, self.token_ids)
        return self

    @classmethod
    def raw(cls, text: str) -> PromptInput:
        return cls(text=text)

    @classmethod
    def chat(cls, messages: list[ChatMessage]) -> PromptInput:
        return cls(messages=list(messages))

    @property
    def is_chat(self) -> bool:
        return self.messages is not None

    def as_messages(self) -> list[ChatMessage]:
        """The chat form; a raw prompt reads as one user turn (for chat-only readers: reward
        models, remote scorers, a fuser's instruction)."""
        if self.messages is not None:
            return list(self.messages)
        return [ChatMessage(role="user", content=self.text or "")]

    def question(self) -> str:
        """The text being answered: the last user turn, or the raw prompt."""
        if self.messages is None:
            return self.text or ""
        users = [m.content for m in self.messages if m.role == "user"]
        return users[-1] if users else self.messages[-1].content


def _check_one_prompt(
    text: str | None, messages: list[ChatMessage] | None, token_ids: list[int] | None = None
) -> None:
    if sum(x is not None for x in (text, messages, token_ids)) != 1:
        raise ValueError("give exactly one of prompt (raw text), messages (chat) or prompt token ids")
    if messages is not None and not messages:
        raise ValueError("messages must not be empty")
    if token_ids is not None and (not token_ids or min(token_ids) < 0):
        raise ValueError("prompt token ids must be a non-empty list of ids >= 0")


class GenerationRequest(_Frozen):
    """One prompt to answer: a raw ``prompt`` to continue (``/v1/completions``, no chat
    template) or chat ``messages`` (exactly one). ``max_tokens`` counts generated tokens in
    total, not per round."""

    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    prompt_token_ids: list[int] | None = None
    max_tokens: int = Field(default=256, ge=1)
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] = Field(default_factory=list)
    seed: int | None = None
    # vLLM's extra sampling fields (neutral by default); see ``ports.Sampling``/``SegmentLimits``
    top_k: int = Field(default=0, ge=-1, description="0 or -1: off")
    min_p: float = Field(default=0.0, ge=0, le=1)
    repetition_penalty: float = Field(default=1.0, gt=0, le=10)
    presence_penalty: float = Field(default=0.0, ge=-2, le=2)
    frequency_penalty: float = Field(default=0.0, ge=-2, le=2)
    logit_bias: dict[int, float] = Field(default_factory=dict, description="token id -> bias (-100..100)")
    min_tokens: int = Field(default=0, ge=0, description="tokens before EOS or a stop token may end")
    ignore_eos: bool = False
    stop_token_ids: list[int] = Field(default_factory=list)
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    # OpenAI's legacy completions: ``echo`` scores the prompt (the raw ``prompt``, else the
    # last message's content, as raw text) and continues it by at most ``max_tokens`` (0 or 1) tokens. ``logprobs``
    # (with or without echo): return the answer's token log-probabilities with this many
    # alternatives per token (0-20; ``ensemble_core.answer_logprobs``); None: none
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo_tokens: int = Field(default=1, ge=0, le=1, description="with echo: tokens to add (0 or 1)")
    # the answer's shape (response_format json_object/json_schema, or a tool call): every
    # member's decoding is constrained to it (see ``structured_output``)
    structured: StructuredOutput | None = None

    @field_validator("logit_bias")
    @classmethod
    def _bias_range(cls, v: dict[int, float]) -> dict[int, float]:
        if any(not -100 <= bias <= 100 for bias in v.values()) or any(token < 0 for token in v):
            raise ValueError("logit_bias maps token ids (>= 0) to biases between -100 and 100")
        return v

    @model_validator(mode="after")
    def _exactly_one(self) -> GenerationRequest:
        _check_one_prompt(self.prompt, self.messages, self.prompt_token_ids)
        return self

    def prompt_input(self) -> PromptInput:
        if self.messages is not None:
            return PromptInput.chat(self.messages)
        if self.prompt_token_ids is not None:
            return PromptInput(token_ids=list(self.prompt_token_ids))
        return PromptInput.raw(self.prompt or "")
