"""Polling jobs."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query

from api.errors import ApiError
from api.services import job_service
from api.state import AppState, get_state
from persistence import repository
from persistence.models import JOB_STATUSES

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.get("/{job_id}")
def get_job(job_id: str, state: AppState = Depends(get_state)) -> dict[str, Any]:
    return job_service.job_view(job_service.load_job(state, job_id))


@router.get("")
def list_jobs(
    status: str | None = None,
    limit: int = Query(default=20, ge=1, le=1000),
    after: str | None = None,
    state: AppState = Depends(get_state),
) -> dict[str, Any]:
    if status is not None and status not in JOB_STATUSES:
        raise ApiError(
            400,
            f"unknown status {status!r}; valid: {', '.join(JOB_STATUSES)}",
            code="invalid_status",
            param="status",
        )
    with state.db.transaction() as session:
        rows = repository.list_jobs(session, status=status, limit=limit + 1, after=after)
        data = [job_service.job_view(j) for j in rows[:limit]]
    return {
        "object": "list",
        "data": data,
        "has_more": len(rows) > limit,
        "last_id": data[-1]["id"] if data else None,
    }
