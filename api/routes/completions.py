"""OpenAI-compatible endpoints, the guide's loop endpoint and presets: parse, prepare, answer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from api.errors import ApiError
from api.guards import Principal, require_api_key
from api.schemas.openai import (
    AggregationOnlyPresetRequest,
    ChatCompletionRequest,
    CompletionRequest,
    LoopRequest,
    PromptFields,
    SelectionOnlyPresetRequest,
    SimplePresetRequest,
)
from api.services import completion_service, config_service, prompt_list, stream_service, token_prompts
from api.services.completion_service import AnswerForm
from api.state import AppState, get_state

router = APIRouter(prefix="/v1", tags=["completions"])

# what a generating endpoint answers besides errors: JSON, an SSE stream (``stream: true``)
# or, for ``background: true``, 202 with the job to poll
ANSWERS: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the answer (JSON), or its server-sent events with `stream: true`",
        "content": {"application/json": {}, "text/event-stream": {"schema": {"type": "string"}}},
    },
    202: {"description": "`background: true`: the job is accepted; poll `Location` (/v1/jobs/{id})"},
}

IdempotencyKey = Header(
    default=None,
    alias="Idempotency-Key",
    description="a retry with the same key attaches to the same job instead of starting another",
)


async def disconnect_waiter(request: Request) -> Callable[[], Awaitable[None]]:
    """A function that returns once the client has closed its connection.

    The body has been read by then, so the server's next ASGI message is the disconnect
    (uvicorn sends it when the connection drops; nothing else arrives on an HTTP/1.1
    connection that waits for its answer)."""

    async def until_gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    return until_gone


ClientLeft = Depends(disconnect_waiter)


async def _respond(
    state: AppState,
    body: PromptFields,
    idempotency_key: str | None,
    principal: Principal,
    *,
    until_gone: Callable[[], Awaitable[None]] | None = None,
    kind: str,
    form: AnswerForm | None = None,
    preset: dict[str, Any] | None = None,
    forced: dict[str, Any] | None = None,
    default_max_tokens: int = 256,
) -> JSONResponse | StreamingResponse:
    # the route is async so that waiting holds no thread; the blocking steps (config read,
    # submission) borrow one from the pool for the moment they take
    if body.background and body.stream:
        raise ApiError(
            400, "background and stream cannot be combined", code="invalid_request", param="background"
        )

    def prepare() -> completion_service.PreparedJob:
        prepared = completion_service.prepare(
            state,
            body,
            kind=kind,
            form=form,
            preset=preset,
            forced=forced,
            default_max_tokens=default_max_tokens,
            restricted=not principal.admin,
        )
        prepared.tenant = principal.tenant
        if not body.stream:
            # nobody relays this job's text as it is decoded: the worker publishes no segment
            # events, only the done event (a stream that attaches through the same
            # Idempotency-Key gets the text from the final state, as for segments it missed)
            prepared.extra["segment_events"] = False
        return prepared

    if body.background:
        # one trip through the thread pool for both steps: each trip costs as much CPU as
        # a grouped INSERT's share (api/services/group_commit.py)
        job, _ = await run_in_threadpool(
            lambda: completion_service.submit(state, prepare(), idempotency_key, accept_unsent=True)
        )
        return JSONResponse(
            {
                "id": job.id,
                "object": "job",
                "status": job.status,
                "created_at": int(job.created_at.timestamp()),
            },
            status_code=202,
            headers={"Location": f"/v1/jobs/{job.id}", "X-Job-Id": job.id},
        )
    if not body.stream:
        # subscribed to the job's events first, then prepared and submitted in one trip
        answer = await completion_service.run_to_answer(state, prepare, idempotency_key, until_gone)
        return JSONResponse(answer, headers={"X-Job-Id": answer["id"]})
    prepared = await run_in_threadpool(prepare)
    if body.timeout is None:
        # a stream shows progress and keeps the connection alive: wait as long as allowed
        prepared.timeout = state.settings.max_sync_timeout_s
    job, frames = await stream_service.open_stream(state, prepared, idempotency_key)
    return StreamingResponse(
        frames,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "X-Job-Id": job.id},
    )


@router.post("/chat/completions", response_model=None, responses=ANSWERS)
async def chat_completions(
    body: ChatCompletionRequest,
    state: AppState = Depends(get_state),
    idempotency_key: str | None = IdempotencyKey,
    principal: Principal = Depends(require_api_key),
    until_gone: Callable[[], Awaitable[None]] = ClientLeft,
) -> JSONResponse | StreamingResponse:
    """The guide's ``prompt`` form answers ``text_completion``; OpenAI's ``messages`` form
    answers ``chat.completion``. Both carry ``choices[i].metadata`` (selected models, method,
    config, round trace)."""
    return await _respond(state, body, idempotency_key, principal, until_gone=until_gone, kind="chat")


@router.post("/completions", response_model=None, responses=ANSWERS)
async def completions(
    body: CompletionRequest,
    state: AppState = Depends(get_state),
    idempotency_key: str | None = IdempotencyKey,
    principal: Principal = Depends(require_api_key),
    until_gone: Callable[[], Awaitable[None]] = ClientLeft,
) -> JSONResponse | StreamingResponse:
    """OpenAI's legacy completions: the prompt is continued as raw text, with no chat template
    (as OpenAI and vLLM do; ``max_tokens`` defaults to 16, as there). A list of prompts gets
    ``n`` choices each, numbered as OpenAI does (prompt ``i``: ``i*n`` to ``i*n+n-1``)."""
    prompts = token_prompts.split(body.prompt)
    if len(prompts) > 1:
        answer = await prompt_list.answer_each(
            state,
            body,
            idempotency_key,
            tenant=principal.tenant,
            restricted=not principal.admin,
            kind="completion",
            form="legacy",
            default_max_tokens=16,
        )
        return JSONResponse(answer, headers={"X-Job-Id": answer["id"]})
    if (
        len(prompts) == 1 and prompts[0] is not body.prompt
    ):  # a list of one prompt (lm-eval's batch of one: [[ids]])
        body = body.model_copy(update={"prompt": prompts[0]})
    return await _respond(
        state,
        body,
        idempotency_key,
        principal,
        until_gone=until_gone,
        kind="completion",
        form="legacy",
        default_max_tokens=16,
    )


@router.post("/loop/completions", response_model=None, responses=ANSWERS)
async def loop_completions(
    body: LoopRequest,
    state: AppState = Depends(get_state),
    idempotency_key: str | None = IdempotencyKey,
    principal: Principal = Depends(require_api_key),
    until_gone: Callable[[], Awaitable[None]] = ClientLeft,
) -> JSONResponse | StreamingResponse:
    """Round robin over every member model (no selection); ``ensemble_config`` sets
    ``max_rounds``, ``score_threshold``, ``max_repeat``."""
    forced = {
        "model_selection_method": "all",
        "use_model_selection": False,
        "ensemble_method": "loop",
        "aggregation_method": "round_robin",
        "use_output_aggregation": True,
    }
    return await _respond(
        state, body, idempotency_key, principal, until_gone=until_gone, kind="loop", forced=forced
    )


@router.post("/ensemble/presets/simple", response_model=None, responses=ANSWERS)
async def preset_simple(
    body: SimplePresetRequest,
    state: AppState = Depends(get_state),
    idempotency_key: str | None = IdempotencyKey,
    principal: Principal = Depends(require_api_key),
    until_gone: Callable[[], Awaitable[None]] = ClientLeft,
) -> JSONResponse | StreamingResponse:
    """Model selection, then output aggregation (``ensemble_method`` names the aggregation,
    e.g. ``reward_based``, or a guide alias such as ``simple``/``loop``)."""
    forced: dict[str, Any] = {
        "model_selection_method": body.model_selection_method,
        "ensemble_method": body.ensemble_method,
        "aggregation_method": None,
        "use_model_selection": True,
        "use_output_aggregation": True,
    }
    if body.aggregation_level:
        forced["aggregation_level"] = body.aggregation_level
    return await _respond(
        state, body, idempotency_key, principal, until_gone=until_gone, kind="preset_simple", forced=forced
    )


@router.post("/ensemble/presets/selection_only", response_model=None, responses=ANSWERS)
async def preset_selection_only(
    body: SelectionOnlyPresetRequest,
    state: AppState = Depends(get_state),
    idempotency_key: str | None = IdempotencyKey,
    principal: Principal = Depends(require_api_key),
    until_gone: Callable[[], Awaitable[None]] = ClientLeft,
) -> JSONResponse | StreamingResponse:
    """The selector picks; the best selected model writes the whole answer (no aggregation)."""
    forced = {
        "model_selection_method": body.model_selection_method,
        "use_model_selection": True,
        "use_output_aggregation": False,
    }
    # the engine lets the first selected member write alone; asking the selector to keep only
    # its best one (top_k/k = 1, where the method has it) makes that member the best
    params = dict((body.ensemble_config or {}).get("model_selection_params") or {})
    best_only = completion_service.best_only_param(body.model_selection_method)
    if best_only and best_only not in params:
        forced["model_selection_params"] = {**params, best_only: 1}
    return await _respond(
        state,
        body,
        idempotency_key,
        principal,
        until_gone=until_gone,
        kind="preset_selection_only",
        forced=forced,
    )


@router.post("/ensemble/presets/aggregation_only", response_model=None, responses=ANSWERS)
async def preset_aggregation_only(
    body: AggregationOnlyPresetRequest,
    state: AppState = Depends(get_state),
    idempotency_key: str | None = IdempotencyKey,
    principal: Principal = Depends(require_api_key),
    until_gone: Callable[[], Awaitable[None]] = ClientLeft,
) -> JSONResponse | StreamingResponse:
    """Every model takes part (no selection); their outputs are aggregated."""
    forced = {
        "model_selection_method": "all",
        "use_model_selection": False,
        "aggregation_method": body.aggregation_method,
        "aggregation_level": body.aggregation_level,
        "use_output_aggregation": True,
    }
    return await _respond(
        state,
        body,
        idempotency_key,
        principal,
        until_gone=until_gone,
        kind="preset_aggregation_only",
        forced=forced,
    )


@router.get("/models")
def list_models(state: AppState = Depends(get_state)) -> dict[str, Any]:
    """The ensemble itself, then each member model of the current config version."""
    row, spec = config_service.current_version(state.db)
    created = int(row.created_at.timestamp())
    members = [
        {
            "id": m.display_name,
            "object": "model",
            "created": created,
            "owned_by": "ensemblehub",
            "engine": m.engine,
            "device": m.device,
            "path": m.path,
            "parent": "ensemble",
        }
        for m in spec.model_specs
    ]
    ensemble = {
        "id": "ensemble",
        "object": "model",
        "created": created,
        "owned_by": "ensemblehub",
        "config_version": row.version,
        "members": [m["id"] for m in members],
        "default_ensemble_config": spec.default_ensemble_config.model_dump(mode="json"),
    }
    return {"object": "list", "data": [ensemble, *members]}


@router.get("/models/{model_id}")
def retrieve_model(model_id: str, state: AppState = Depends(get_state)) -> dict[str, Any]:
    for model in list_models(state)["data"]:
        if model["id"] == model_id:
            return model
    raise ApiError(404, f"the model {model_id!r} does not exist", code="model_not_found", param="model")
