"""Batch submit-and-poll (the guide's ``POST /v1/ensemble/batch``, with OpenAI's batch states)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from api.guards import Principal, require_api_key
from api.schemas.batch import BatchRequest
from api.services import batch_service, webhook_service
from api.state import AppState, get_state
from persistence import batch_repository

router = APIRouter(prefix="/v1/ensemble/batch", tags=["batch"])

JSONL_TYPES = ("application/x-ndjson", "application/jsonl", "application/x-jsonlines")


@router.post("", status_code=202)
def submit_batch(
    body: BatchRequest, state: AppState = Depends(get_state), principal: Principal = Depends(require_api_key)
) -> JSONResponse:
    """Accept every example at once (202); each runs as its own job. Poll the ``Location``."""
    batch = batch_service.create_batch(state, body, tenant=principal.tenant, restricted=not principal.admin)
    return JSONResponse(
        batch_service.batch_view(batch),
        status_code=202,
        headers={"Location": f"/v1/ensemble/batch/{batch.id}"},
    )


@router.get("")
def list_batches(
    limit: int = Query(default=20, ge=1, le=100),
    after: str | None = None,
    state: AppState = Depends(get_state),
    principal: Principal = Depends(require_api_key),
) -> dict[str, Any]:
    with state.db.transaction() as session:
        rows = batch_repository.list_batches(session, limit=limit + 1, after=after, tenant=principal.tenant)
        data = [batch_service.batch_view(b) for b in rows[:limit]]
    return {
        "object": "list",
        "data": data,
        "has_more": len(rows) > limit,
        "last_id": data[-1]["id"] if data else None,
    }


@router.get("/{batch_id}")
def get_batch(
    batch_id: str, state: AppState = Depends(get_state), principal: Principal = Depends(require_api_key)
) -> dict[str, Any]:
    """Status (validating, in_progress, finalizing, completed, failed, cancelling, cancelled) and counts."""
    return batch_service.batch_view(batch_service.load_batch(state, batch_id, tenant=principal.tenant))


@router.get("/{batch_id}/results", response_model=None)
def batch_results(
    batch_id: str,
    request: Request,
    after: int = Query(default=-1, ge=-1, description="return items whose input index is after this"),
    limit: int = Query(default=100, ge=1, le=1000),
    state: AppState = Depends(get_state),
    principal: Principal = Depends(require_api_key),
) -> dict[str, Any] | StreamingResponse:
    """Items in input order with their result or error: paged JSON, or every item as JSON
    lines with ``Accept: application/x-ndjson``."""
    batch_service.load_batch(state, batch_id, tenant=principal.tenant)
    accept = request.headers.get("accept", "")
    if any(t in accept for t in JSONL_TYPES):
        return StreamingResponse(
            batch_service.results_jsonl(state, batch_id), media_type="application/x-ndjson"
        )
    return batch_service.results_page(state, batch_id, after=after, limit=limit)


@router.post("/{batch_id}/cancel")
def cancel_batch(
    batch_id: str, state: AppState = Depends(get_state), principal: Principal = Depends(require_api_key)
) -> dict[str, Any]:
    """Queued and running items are cancelled (running ones keep their partial answers); finished ones are kept."""
    batch_service.load_batch(state, batch_id, tenant=principal.tenant)
    return batch_service.batch_view(batch_service.cancel_batch(state, batch_id))


@router.get("/{batch_id}/webhooks")
def batch_webhooks(
    batch_id: str, state: AppState = Depends(get_state), principal: Principal = Depends(require_api_key)
) -> dict[str, Any]:
    batch_service.load_batch(state, batch_id, tenant=principal.tenant)
    return webhook_service.list_deliveries(state, batch_id=batch_id)


@router.post("/{batch_id}/webhooks/resend", status_code=202)
def resend_batch_webhook(
    batch_id: str, state: AppState = Depends(get_state), principal: Principal = Depends(require_api_key)
) -> dict[str, Any]:
    batch_service.load_batch(state, batch_id, tenant=principal.tenant)
    return webhook_service.resend(state, batch_id=batch_id)
