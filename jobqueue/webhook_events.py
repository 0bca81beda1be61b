"""Webhook events: their JSON payloads and their first delivery rows.

An event is recorded as a ``webhook_deliveries`` row in the same transaction as the state
change it reports (an outbox): the caller enqueues the delivery task after commit, so an
event is never sent for a change that rolled back, and a lost task leaves a pending row that
can be found and re-sent.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from sqlalchemy.orm import Session

from persistence import batch_repository, repository, webhook_repository
from persistence.models import Batch, Job, utcnow
from persistence.repository import Settled

JOB_EVENT_TYPES = {"succeeded": "job.succeeded", "failed": "job.failed", "cancelled": "job.cancelled"}
BATCH_EVENT_TYPES = {"completed": "batch.completed", "failed": "batch.failed", "cancelled": "batch.cancelled"}


def new_event_id() -> str:
    return f"evt_{uuid.uuid4().hex}"


def _ts(value: Any) -> int | None:
    return int(value.timestamp()) if value is not None else None


def job_event_data(job: Job) -> dict[str, Any]:
    result = job.result or {}
    return {
        "id": job.id,
        "object": "job",
        "kind": job.kind,
        "status": job.status,
        "batch_id": job.batch_id,
        "created_at": _ts(job.created_at),
        "finished_at": _ts(job.finished_at),
        "result": (
            {
                "text": result.get("text"),
                "finish_reason": result.get("finish_reason"),
                "selected_models": result.get("selected_models"),
                "method": result.get("method"),
            }
            if job.status == "succeeded"
            else None
        ),
        "usage": job.usage,
        "error": (
            {"code": job.error_code, "message": job.error_message} if job.status != "succeeded" else None
        ),
    }


def batch_event_data(batch: Batch) -> dict[str, Any]:
    return {
        "id": batch.id,
        "object": "batch",
        "status": batch.status,
        "request_counts": {
            "total": batch.total,
            "completed": batch.completed,
            "failed": batch.failed,
            "cancelled": batch.cancelled,
        },
        "created_at": _ts(batch.created_at),
        "finished_at": _ts(batch.finished_at),
        "results_url": f"/v1/ensemble/batch/{batch.id}/results",
    }


def envelope(event_id: str, event_type: str, data: dict[str, Any]) -> dict[str, Any]:
    """The shape OpenAI's webhook events have (``client.webhooks.unwrap`` parses it)."""
    return {"id": event_id, "object": "event", "type": event_type, "created_at": _ts(utcnow()), "data": data}


def record_job_event(session: Session, job: Job) -> int | None:
    """Record the job's final-state event when it has a webhook; returns the delivery id."""
    event_type = JOB_EVENT_TYPES.get(job.status)
    if not job.webhook_url or event_type is None:
        return None
    event_id = new_event_id()
    row = webhook_repository.add_delivery(
        session,
        event_id=event_id,
        event_type=event_type,
        url=job.webhook_url,
        payload=envelope(event_id, event_type, job_event_data(job)),
        job_id=job.id,
    )
    return row.id


def record_batch_event(session: Session, batch: Batch) -> int | None:
    event_type = BATCH_EVENT_TYPES.get(batch.status)
    if not batch.webhook_url or event_type is None:
        return None
    event_id = new_event_id()
    row = webhook_repository.add_delivery(
        session,
        event_id=event_id,
        event_type=event_type,
        url=batch.webhook_url,
        payload=envelope(event_id, event_type, batch_event_data(batch)),
        batch_id=batch.id,
    )
    return row.id


def record_settlement_events(session: Session, settled: Iterable[Settled | None]) -> list[int]:
    """Events for jobs that just reached a final state (and batches they finished). A job
    whose transition carries its final row (``Settled.snapshot``) is not read again."""
    ids: list[int] = []
    for item in settled:
        if item is None:
            continue
        job = item.snapshot
        if job is None:
            session.expire_all()
            job = repository.get_job(session, item.job_id)
        if job is not None:
            delivery = record_job_event(session, job)
            if delivery is not None:
                ids.append(delivery)
        if item.batch_id and item.batch_status:
            delivery = record_finished_batch(session, item.batch_id)
            if delivery is not None:
                ids.append(delivery)
    return ids


def record_finished_batch(session: Session, batch_id: str) -> int | None:
    session.expire_all()
    batch = batch_repository.get_batch(session, batch_id)
    return record_batch_event(session, batch) if batch is not None else None


def record_manual_resend(
    session: Session, *, job_id: str | None = None, batch_id: str | None = None
) -> int | None:
    """A new attempt of the latest event of a job or batch: same event id, same payload, so a
    receiver that already processed it can drop the duplicate. None: no event to re-send."""
    last = webhook_repository.latest_event_attempt(session, job_id=job_id, batch_id=batch_id)
    if last is None:
        return None
    row = webhook_repository.add_delivery(
        session,
        event_id=last.event_id,
        event_type=last.event_type,
        url=last.url,
        payload=last.payload,
        job_id=last.job_id,
        batch_id=last.batch_id,
        attempt=webhook_repository.next_attempt_number(session, last.event_id),
        trigger="manual",
    )
    return row.id
