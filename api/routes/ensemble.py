"""The guide's ensemble endpoints: methods, config versions, direct inference."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Header
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from api.guards import Principal, require_admin, require_api_key
from api.schemas.ensemble import ConfigUpdate, InferenceRequest
from api.services import config_service, job_cancel, job_service, limits
from api.services.messages import build_generation, instruction_messages
from api.state import AppState, get_state
from ensemble_core.methods import list_methods
from persistence import repository
from persistence.models import ConfigVersion, Job

router = APIRouter(prefix="/v1/ensemble", tags=["ensemble"])


def version_view(row: ConfigVersion, *, admin: bool = True) -> dict[str, Any]:
    """A config version; a tenant (non-admin key) sees it without the fields that say how to
    load or reach a model (``config_service.REDACTED_KEYS``)."""
    return {
        "id": row.id,
        "version": row.version,
        "content_hash": row.content_hash,
        "created_at": int(row.created_at.timestamp()),
        "note": row.note,
        **(row.spec if admin else config_service.redacted(row.spec)),
    }


@router.get("/methods")
def methods() -> dict[str, Any]:
    return list_methods()


@router.get("/config")
def get_config(
    state: AppState = Depends(get_state), principal: Principal = Depends(require_api_key)
) -> dict[str, Any]:
    row, _ = config_service.current_version(state.db)
    return version_view(row, admin=principal.admin)


@router.post("/config")
def post_config(
    body: ConfigUpdate, state: AppState = Depends(get_state), _admin: Principal = Depends(require_admin)
) -> dict[str, Any]:
    """Store a new config version (needs an admin key once keys exist)."""
    defaults = body.default_ensemble_config or {}
    if isinstance(defaults.get("max_rounds"), int):
        limits.check_max_rounds(
            state.settings, defaults["max_rounds"], param="default_ensemble_config.max_rounds"
        )
    update = body.model_dump(mode="json", exclude_none=True, exclude={"note"})
    row = config_service.append_version(state.db, update, body.note)
    return version_view(row)


@router.get("/config/versions")
def config_versions(
    limit: int = 100,
    offset: int = 0,
    state: AppState = Depends(get_state),
    principal: Principal = Depends(require_api_key),
) -> dict[str, Any]:
    with state.db.transaction() as session:
        rows = repository.list_config_versions(session, limit=min(max(limit, 1), 1000), offset=max(offset, 0))
        data = [version_view(r, admin=principal.admin) for r in rows]
    return {"object": "list", "data": data}


@router.post("/inference")
async def inference(
    body: InferenceRequest,
    state: AppState = Depends(get_state),
    idempotency_key: str | None = Header(default=None, alias="Idempotency-Key"),
    principal: Principal = Depends(require_api_key),
) -> JSONResponse:
    # async so that the wait holds no thread; the submission borrows one briefly
    job = await run_in_threadpool(_submit_inference, state, body, idempotency_key, principal)
    job = await job_service.wait_for_job(state, job.id, job_service.resolve_timeout(state, body.timeout))
    job_service.raise_unless_succeeded(job)
    result = job.result or {}
    config_json = (job.request or {}).get("ensemble_config")
    return JSONResponse(
        {
            "id": job.id,
            "object": "ensemble.inference",
            "created": int(job.created_at.timestamp()),
            "result": {
                "output": result.get("text", ""),
                "selected_models": result.get("selected_models", []),
                "method": result.get("method"),
                "finish_reason": result.get("finish_reason"),
                "stop_reason": result.get("stop_reason"),
                "config": config_json,
                "trace": result.get("trace"),
            },
            "config": config_json,
            "config_version_id": job.config_version_id,
            "usage": _openai_usage(result),
        },
        headers={"X-Job-Id": job.id},
    )


def _submit_inference(
    state: AppState, body: InferenceRequest, idempotency_key: str | None, principal: Principal
) -> Job:
    row, spec = config_service.current_version(state.db)
    config = config_service.merge_config(
        spec,
        body.ensemble_config,
        restricted=not principal.admin,
        max_rounds=body.max_rounds,
        score_threshold=body.score_threshold,
    )
    generation = build_generation(
        instruction_messages(body.instruction, body.input),
        max_tokens=body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        stop=body.stop,
        seed=body.seed,
    )
    limits.check_request_limits(state.settings, generation, config)
    job, _ = job_service.submit_job(
        state,
        kind="inference",
        generation=generation,
        config=config,
        config_version_id=row.id,
        idempotency_key=idempotency_key,
        webhook_url=body.webhook_url,
        tenant=principal.tenant,
        extra={"deadline_s": job_cancel.resolve_deadline(state.settings, body.deadline_s)},
    )
    return job


def _openai_usage(result: dict[str, Any]) -> dict[str, Any]:
    usage = result.get("usage") or {}
    prompt, completion = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "per_model": usage.get("per_model", {}),
    }
