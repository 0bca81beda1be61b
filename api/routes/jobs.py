"""Polling jobs, cancelling a queued one, and its webhook attempts."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query

from api.errors import ApiError
from api.guards import Principal, require_api_key
from api.services import job_service, webhook_service
from api.state import AppState, get_state
from jobqueue.webhook_events import record_settlement_events
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
    """Cancel a queued job. A running job is not interrupted (409); a finished one stays."""
    job = job_service.load_job(state, job_id, tenant=principal.tenant)
    if job.status == "cancelled":
        return job_service.job_view(job)
    with state.db.transaction() as session:
        settled = repository.cancel_job(session, job_id)
        deliveries = record_settlement_events(session, [settled]) if settled else []
    if settled is None:
        current = job_service.load_job(state, job_id)
        raise ApiError(
            409,
            f"job {job_id} is {current.status}; only a queued job can be cancelled",
            code="job_not_cancellable",
            param="job_id",
        )
    webhook_service.send(state, deliveries)
    job_service.publish_event(state, job_id, {"type": "done", "status": "cancelled"})
    return job_service.job_view(job_service.load_job(state, job_id))


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
