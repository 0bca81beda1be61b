"""OpenAI's Batch API: ``/v1/batches`` (same batches and jobs as ``/v1/ensemble/batch``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query

from api.guards import Principal, require_api_key
from api.schemas.openai_files import BatchCreateRequest
from api.services import openai_batch_service
from api.state import AppState, get_state

router = APIRouter(prefix="/v1/batches", tags=["batches"])


@router.post("")
def create_batch(
    body: BatchCreateRequest,
    state: AppState = Depends(get_state),
    principal: Principal = Depends(require_api_key),
) -> dict[str, Any]:
    """Run every line of ``input_file_id`` as its own job; poll ``GET /v1/batches/{id}``."""
    return openai_batch_service.create(state, body, tenant=principal.tenant, restricted=not principal.admin)


@router.get("")
def list_batches(
    limit: int = Query(default=20, ge=1, le=100),
    after: str | None = None,
    state: AppState = Depends(get_state),
    principal: Principal = Depends(require_api_key),
) -> dict[str, Any]:
    return openai_batch_service.list_view(state, limit=limit, after=after, tenant=principal.tenant)


@router.get("/{batch_id}")
def retrieve_batch(
    batch_id: str, state: AppState = Depends(get_state), principal: Principal = Depends(require_api_key)
) -> dict[str, Any]:
    return openai_batch_service.retrieve(state, batch_id, tenant=principal.tenant)


@router.post("/{batch_id}/cancel")
def cancel_batch(
    batch_id: str, state: AppState = Depends(get_state), principal: Principal = Depends(require_api_key)
) -> dict[str, Any]:
    return openai_batch_service.cancel(state, batch_id, tenant=principal.tenant)
