"""Polling jobs, cancelling one (queued or running), and its webhook attempts."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query

from api.errors import ApiError
from api.guards import Principal, require_api_key
from api.services import job_cancel, job_service, webhook_service
from api.state import AppState, get_state
from persistence import repository
from persistence.models import JOB_STATUSES

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.get("/{job_id}")
def get_job(
    job_id: str, state: AppState = Depends(get_state), principal: Principal = Depends(require_api_key)
) -> dict[str, Any]:
    return job_service.job_view(job_service.load_job(state, job_id, tenant=principal.tenant))


@router.post("/{job_id}/cancel")
def cancel_job(
    job_id: str, state: AppState = Depends(get_state), principal: Principal = Depends(require_api_key)
) -> dict[str, Any]:
    """Cancel a queued or running job: ``cancelled`` at once; a running one stops within one
    decode step and keeps its partial text and usage in ``result``. A finished job stays (409)."""
    return job_service.job_view(job_cancel.cancel_job(state, job_id, tenant=principal.tenant))


@router.get("/{job_id}/webhooks")
def job_webhooks(
    job_id: str, state: AppState = Depends(get_state), principal: Principal = Depends(require_api_key)
) -> dict[str, Any]:
    """Every delivery attempt of the job's webhook events (one row per attempt)."""
    job_service.load_job(state, job_id, tenant=principal.tenant)
    return webhook_service.list_deliveries(state, job_id=job_id)


@router.post("/{job_id}/webhooks/resend", status_code=202)
def resend_job_webhook(
    job_id: str, state: AppState = Depends(get_state), principal: Principal = Depends(require_api_key)
) -> dict[str, Any]:
    """Send the job's latest event again (same event id), e.g. after the schedule was spent."""
    job_service.load_job(state, job_id, tenant=principal.tenant)
    return webhook_service.resend(state, job_id=job_id)


@router.get("")
def list_jobs(
    status: str | None = None,
    limit: int = Query(default=20, ge=1, le=1000),
    after: str | None = None,
    batch_id: str | None = None,
    state: AppState = Depends(get_state),
    principal: Principal = Depends(require_api_key),
) -> dict[str, Any]:
    if status is not None and status not in JOB_STATUSES:
        raise ApiError(
            400,
            f"unknown status {status!r}; valid: {', '.join(JOB_STATUSES)}",
            code="invalid_status",
            param="status",
        )
    with state.db.transaction() as session:
        rows = repository.list_jobs(
            session, status=status, limit=limit + 1, after=after, batch_id=batch_id, tenant=principal.tenant
        )
        data = [job_service.job_view(j) for j in rows[:limit]]
    return {
        "object": "list",
        "data": data,
        "has_more": len(rows) > limit,
        "last_id": data[-1]["id"] if data else None,
    }
