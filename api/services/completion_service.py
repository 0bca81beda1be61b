"""The generating endpoints' use case: turn a wire request into one job, run it through the
backbone's submit/wait, and shape the answer the way the endpoint's clients expect.

Three answer forms share one job model: the guide's ``prompt`` form (``text_completion`` with
``choices[i].text`` and ``choices[i].metadata``), OpenAI's chat form (``chat.completion``
with ``choices[i].message``) and OpenAI's legacy completions (``text_completion``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from api.errors import ApiError
from api.schemas.openai import ChatMessageIn, PromptFields
from api.services import (
    config_service,
    job_cancel,
    job_service,
    limits,
    request_policy,
    structured_request,
    token_prompts,
)
from api.services.messages import build_generation
from api.state import AppState
from ensemble_core.answer_logprobs import chat_logprobs
from ensemble_core.methods import list_methods
from ensemble_core.spec import EnsembleConfig, EnsembleSpec, GenerationRequest
from persistence.models import ConfigVersion, Job

AnswerForm = Literal["text", "chat", "legacy"]

# OpenAI fields the ensemble cannot honour, with the value that means "not used"
_NEUTRAL = {
    "suffix": (None, ""),
    "best_of": (None, 1),
}
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
# fields that do not change what is generated: left out of the idempotency fingerprint
_TRANSPORT_FIELDS = {
    "timeout",
    "stream",
    "stream_options",
    "user",
    "parallel_tool_calls",
    "store",
    "metadata",
    "service_tier",
    "prompt_cache_key",
}
# the request's sampling fields that go to the engine as they are (vLLM's names)
_SAMPLING_FIELDS = (
    "top_k",
    "min_p",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "min_tokens",
    "ignore_eos",
    "stop_token_ids",
    "include_stop_str_in_output",
    "skip_special_tokens",
)


@dataclass
class PreparedJob:
    """Everything needed to submit one job and answer for it."""

    kind: str
    form: AnswerForm
    model: str
    generation: GenerationRequest
    config: EnsembleConfig
    config_version_id: int
    n: int
    timeout: float
    fingerprint: str
    webhook_url: str | None = None
    include_usage: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    # whose job it is (None in the open, keyless mode); set by the route from the API key
    tenant: str | None = None


def prepare(
    state: AppState,
    body: PromptFields,
    *,
    kind: str,
    form: AnswerForm | None = None,
    preset: dict[str, Any] | None = None,
    forced: dict[str, Any] | None = None,
    default_max_tokens: int = 256,
    current: tuple[ConfigVersion, EnsembleSpec] | None = None,
    restricted: bool = False,
) -> PreparedJob:
    """Validate the body against the current config version and build the job's request.

    ``preset`` fields are defaults the request's ``ensemble_config`` may override; ``forced``
    fields define the endpoint (loop, presets) and win over the request's. ``current`` is the
    config version already read by a caller that prepares many requests (OpenAI batches).
    ``restricted``: a tenant's (non-admin) request, whose ``ensemble_config`` may only choose
    methods, numbers and names (``request_policy``)."""
    _refuse_unsupported(body)
    structured = structured_request.structured_output(body, kind=kind)
    token_ids = body.prompt if kind == "completion" and token_prompts.is_token_prompt(body.prompt) else None
    messages = _messages(body) if token_ids is None else None
    if messages is not None and kind != "completion":
        messages = structured_request.with_tool_instruction(messages, structured)
    # /v1/completions continues the prompt as raw text (OpenAI's and vLLM's semantics): no
    # chat template; every other endpoint reads it as the user's turn of a chat
    raw_prompt = None
    if kind == "completion" and messages is not None and body.prompt is not None:
        raw_prompt = messages[0]["content"]
    form = form or ("chat" if body.messages is not None else "text")
    row, spec = current or config_service.current_version(state.db)
    models = _member_filter(body.model, spec)
    if token_ids is not None:
        token_prompts.check_one_tokenizer(spec, models)
    if structured is not None:
        _check_structured_engines(spec, models)
    overrides = {**(preset or {}), **(body.ensemble_config or {}), **(forced or {})}
    if restricted:  # the endpoint's own preset and forced fields are trusted
        request_policy.check_tenant_config(body.ensemble_config, spec)
    config = config_service.merge_config(
        spec,
        overrides,
        max_rounds=body.max_rounds,
        score_threshold=body.score_threshold,
    )
    max_tokens = getattr(body, "max_completion_tokens", None) or body.max_tokens
    if max_tokens is None:
        max_tokens = default_max_tokens
    echo = echo_fields(body, form, max_tokens)
    if max_tokens == 0 and not echo:
        raise ApiError(
            400, "max_tokens must be at least 1 (0 only with echo)", code="invalid_value", param="max_tokens"
        )
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stop) > 4:
        raise ApiError(400, "at most 4 stop sequences", code="invalid_stop", param="stop")
    generation = build_generation(
        None if raw_prompt is not None else messages,
        raw_prompt=raw_prompt,
        token_ids=token_ids,
        max_tokens=max(max_tokens, 1),
        temperature=body.temperature,
        top_p=body.top_p,
        stop=stop,
        seed=body.seed,
        **sampling_fields(body, max(max_tokens, 1)),
        **echo,
        **({"structured": structured} if structured is not None else {}),
    )
    limits.check_request_limits(state.settings, generation, config)
    extra: dict[str, Any] = {"endpoint": kind}
    extra["deadline_s"] = job_cancel.resolve_deadline(state.settings, body.deadline_s)
    if body.n > 1:
        extra["n"] = body.n
    if models:
        extra["models"] = models
    wire = body.model_dump(mode="json", exclude=_TRANSPORT_FIELDS, exclude_none=True)
    return PreparedJob(
        kind=kind,
        form=form,
        model=body.model,
        generation=generation,
        config=config,
        config_version_id=row.id,
        n=body.n,
        timeout=job_service.resolve_timeout(state, body.timeout),
        fingerprint=job_service.request_fingerprint(kind, wire),
        webhook_url=body.webhook_url,
        include_usage=bool(body.stream_options and body.stream_options.include_usage),
        extra=extra,
    )


def submit(
    state: AppState,
    prepared: PreparedJob,
    idempotency_key: str | None,
    *,
    job_id: str | None = None,
    accept_unsent: bool = False,
    reply_to: str | None = None,
) -> tuple[Job, bool]:
    """``accept_unsent``: a job answered later (``background``) is accepted even while the
    broker is down; the sweeper sends it when the broker is back. ``reply_to``: see
    ``job_service.submit_job``."""
    return job_service.submit_job(
        state,
        kind=prepared.kind,
        generation=prepared.generation,
        config=prepared.config,
        config_version_id=prepared.config_version_id,
        idempotency_key=idempotency_key,
        webhook_url=prepared.webhook_url,
        tenant=prepared.tenant,
        extra=prepared.extra,
        fingerprint=prepared.fingerprint,
        job_id=job_id,
        accept_unsent=accept_unsent,
        reply_to=reply_to,
    )


async def run_to_answer(
    state: AppState,
    prepare: Callable[[], PreparedJob],
    idempotency_key: str | None,
    until_gone: Callable[[], Awaitable[None]] | None = None,
) -> dict[str, Any]:
    """Prepare and submit (or attach to the job of the same Idempotency-Key), wait, answer;
    504 past the timeout. ``prepare`` and the submission share one trip through the thread
    pool, made once the job's events are subscribed; the wait holds no thread.

    A client that disconnects while it waits (``until_gone`` returns) has its job cancelled,
    as vLLM aborts a request whose client left: nobody will read the answer. Not with an
    Idempotency-Key: a retry with the key may come back for the job, so it runs on."""
    prepared: list[PreparedJob] = []

    def prepare_and_submit(job_id: str, reply_to: str | None) -> tuple[Job, bool]:
        prepared.append(prepare())
        return submit(state, prepared[0], idempotency_key, job_id=job_id, reply_to=reply_to)

    watch = until_gone if idempotency_key is None else None
    try:
        job = await job_service.submit_and_wait(
            state, prepare_and_submit, lambda: prepared[0].timeout, until_gone=watch
        )
    except job_service.ClientGone as gone:
        await job_cancel.cancel_after_client_left(state, gone.job.id, "closed its connection")
        raise ApiError(
            499, "the client closed the request; its job was cancelled", code="client_closed"
        ) from gone
    job_service.raise_unless_succeeded(job)
    return answer(job, prepared[0].form, prepared[0].model)


# ---------------------------------------------------------------- answers


def answer(job: Job, form: AnswerForm, model: str) -> dict[str, Any]:
    result = job.result or {}
    structured = structured_request.structured_of(job.request) if form == "chat" else None
    choices = []
    for index, choice in enumerate(result.get("choices") or [result]):
        text = choice.get("text", "")
        item: dict[str, Any] = {"index": index}
        finish_reason = choice.get("finish_reason") or "stop"
        if form == "chat":
            content, tool_calls, finish_reason = structured_request.message_parts(
                text, finish_reason, structured, f"call_{job.id}_{index}"
            )
            item["message"] = {"role": "assistant", "content": content, "refusal": None}
            if tool_calls:
                item["message"]["tool_calls"] = tool_calls
        else:
            item["text"] = text
        item["logprobs"] = logprobs_view(choice.get("logprobs"), form)
        item["finish_reason"] = finish_reason
        item["metadata"] = choice_metadata(job, choice)
        choices.append(item)
    return {
        "id": job.id,
        "object": "chat.completion" if form == "chat" else "text_completion",
        "created": int(job.created_at.timestamp()),
        "model": model,
        "choices": choices,
        "usage": usage_view(result),
        "system_fingerprint": None,
    }


def logprobs_view(logprobs: dict[str, Any] | None, form: AnswerForm) -> dict[str, Any] | None:
    """A choice's stored logprobs (the legacy form) as the endpoint's clients read them."""
    if logprobs is None:
        return None
    return chat_logprobs(logprobs) if form == "chat" else logprobs


def choice_metadata(job: Job, choice: dict[str, Any]) -> dict[str, Any]:
    return {
        "selected_models": choice.get("selected_models", []),
        "method": choice.get("method"),
        "ensemble_config": (job.request or {}).get("ensemble_config"),
        "stop_reason": choice.get("stop_reason"),
        "trace": choice.get("trace"),
        "job_id": job.id,
        "config_version_id": job.config_version_id,
    }


def usage_view(result: dict[str, Any]) -> dict[str, Any]:
    usage = result.get("usage") or {}
    prompt, completion = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "per_model": usage.get("per_model", {}),
    }


# ---------------------------------------------------------------- request checks


def echo_fields(body: PromptFields, form: AnswerForm, max_tokens: int) -> dict[str, Any]:
    """``logprobs`` and legacy completions' ``echo``: the engine's ``logprobs`` is the number
    of alternatives per token (``ensemble_core.answer_logprobs``; with ``echo``, the prompt's
    tokens are scored too, as lm-eval's loglikelihood asks: ``ensemble_core.echo``).

    Legacy completions send ``logprobs`` as that number (0-20); chat sends ``logprobs: true``
    and ``top_logprobs`` (0-20), as OpenAI's chat API does."""
    echo = bool(getattr(body, "echo", False))
    if form == "legacy":
        top = _legacy_logprobs(body.logprobs)
        if body.top_logprobs is not None:
            raise ApiError(
                400,
                "top_logprobs is a chat field; legacy completions take logprobs (0-20)",
                code="invalid_value",
                param="top_logprobs",
            )
    else:
        top = _chat_logprobs(body.logprobs, body.top_logprobs)
    if not echo:
        return {} if top is None else {"logprobs": top}
    if max_tokens > 1 or body.n > 1 or body.stream:
        raise ApiError(
            400,
            "echo scores the prompt: use it with max_tokens 0 or 1, n 1 and no stream",
            code="unsupported_parameter",
            param="echo",
        )
    return {"echo": True, "logprobs": top, "echo_tokens": max_tokens}


def _legacy_logprobs(value: bool | int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not 0 <= value <= 20:
        raise ApiError(
            400, "logprobs must be an integer from 0 to 20", code="invalid_value", param="logprobs"
        )
    return value


def _chat_logprobs(logprobs: bool | int | None, top_logprobs: int | None) -> int | None:
    if logprobs is not None and not isinstance(logprobs, bool):
        raise ApiError(400, "logprobs must be true or false here", code="invalid_value", param="logprobs")
    if top_logprobs is not None and not 0 <= top_logprobs <= 20:
        raise ApiError(
            400, "top_logprobs must be an integer from 0 to 20", code="invalid_value", param="top_logprobs"
        )
    if top_logprobs and not logprobs:
        raise ApiError(400, "top_logprobs needs logprobs: true", code="invalid_value", param="top_logprobs")
    return (top_logprobs or 0) if logprobs else None


def sampling_fields(body: PromptFields, max_tokens: int) -> dict[str, Any]:
    """vLLM's sampling fields the request set, checked where the schema cannot (400 with the
    field as ``param``)."""
    fields: dict[str, Any] = {
        name: getattr(body, name) for name in _SAMPLING_FIELDS if getattr(body, name) is not None
    }
    if body.logit_bias:
        try:
            bias = {int(token): float(value) for token, value in body.logit_bias.items()}
        except ValueError as exc:
            raise ApiError(
                400, "logit_bias keys must be token ids (integers)", code="invalid_value", param="logit_bias"
            ) from exc
        if any(token < 0 for token in bias) or any(not -100 <= v <= 100 for v in bias.values()):
            raise ApiError(
                400,
                "logit_bias maps token ids (>= 0) to biases between -100 and 100",
                code="invalid_value",
                param="logit_bias",
            )
        fields["logit_bias"] = bias
    if any(token < 0 for token in body.stop_token_ids or []):
        raise ApiError(400, "stop_token_ids must be >= 0", code="invalid_value", param="stop_token_ids")
    if (body.min_tokens or 0) > max_tokens:
        raise ApiError(
            400,
            f"min_tokens ({body.min_tokens}) must not exceed max_tokens ({max_tokens})",
            code="invalid_value",
            param="min_tokens",
        )
    return fields


def _refuse_unsupported(body: PromptFields) -> None:
    for name, neutral in _NEUTRAL.items():
        value = getattr(body, name, None)
        if value not in neutral:
            raise ApiError(
                400,
                f"{name}={value!r} is not supported by the ensemble; leave it out",
                code="unsupported_parameter",
                param=name,
            )


def _check_structured_engines(spec: EnsembleSpec, models: list[str] | None) -> None:
    members = [m for m in spec.model_specs if models is None or m.display_name in models]
    vllm = [m.display_name for m in members if m.engine == "vllm"]
    if vllm:
        raise ApiError(
            400,
            "structured output (response_format, tools) constrains every member's decoding, which "
            f"the vllm engine does not do here; these members run on it: {', '.join(vllm)}",
            code="unsupported_parameter",
            param="response_format",
        )


def _messages(body: PromptFields) -> list[dict[str, str]]:
    if (body.prompt is None) == (body.messages is None):
        raise ApiError(
            400,
            "give exactly one of 'prompt' (the guide's form) or 'messages' (OpenAI's chat form)",
            code="invalid_request",
            param="messages" if body.messages is not None else "prompt",
        )
    if body.prompt is not None:
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if any(not isinstance(p, str) for p in prompts):
            raise ApiError(
                400,
                "token-id prompts are taken by /v1/completions only; send text here",
                code="invalid_prompt",
                param="prompt",
            )
        if len(prompts) != 1:
            raise ApiError(
                400,
                "one prompt per request; send several with POST /v1/ensemble/batch",
                code="invalid_prompt",
                param="prompt",
            )
        return [{"role": "user", "content": prompts[0]}]
    if not body.messages:
        raise ApiError(400, "messages must not be empty", code="invalid_messages", param="messages")
    return [_message(m, i) for i, m in enumerate(body.messages)]


def _message(message: ChatMessageIn, index: int) -> dict[str, str]:
    if message.role == "tool" or (message.role == "assistant" and getattr(message, "tool_calls", None)):
        return structured_request.tool_turn(message, index)
    role = _ROLES.get(message.role)
    if role is None:
        raise ApiError(
            400,
            f"messages[{index}].role {message.role!r} is not supported; use system, developer, user, assistant or tool",
            code="invalid_messages",
            param=f"messages.{index}.role",
        )
    content = message.content
    if isinstance(content, list):
        if any(part.type != "text" for part in content):
            raise ApiError(
                400,
                f"messages[{index}]: only text content parts are supported",
                code="invalid_messages",
                param=f"messages.{index}.content",
            )
        content = "".join(part.text or "" for part in content)
    return {"role": role, "content": content or ""}


def _member_filter(model: str, spec: EnsembleSpec) -> list[str] | None:
    """``ensemble`` means every member; a member's name means that member alone."""
    if model in ("ensemble", ""):
        return None
    names = [m.display_name for m in spec.model_specs]
    if model in names:
        return [model]
    raise ApiError(
        404,
        f"the model {model!r} does not exist; available: ensemble, {', '.join(names)}",
        code="model_not_found",
        param="model",
    )


def best_only_param(selection_method: str) -> str | None:
    """The parameter that makes a selector keep only its top model (``top_k`` or ``k``)."""
    for method in list_methods()["model_selection"]:
        if selection_method == method["name"] or selection_method in method["aliases"]:
            properties = method["params_schema"].get("properties", {})
            return next((p for p in ("top_k", "k") if p in properties), None)
    return None  # unknown: merge_config reports it with the valid names
