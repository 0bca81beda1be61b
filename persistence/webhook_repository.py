"""Repository functions for webhook delivery attempts (one row per attempt)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from persistence.models import WebhookDelivery, utcnow


def add_delivery(
    session: Session,
    *,
    event_id: str,
    event_type: str,
    url: str,
    payload: dict[str, Any],
    job_id: str | None = None,
    batch_id: str | None = None,
    attempt: int = 1,
    trigger: str = "event",
    scheduled_at: datetime | None = None,
) -> WebhookDelivery:
    row = WebhookDelivery(
        event_id=event_id,
        event_type=event_type,
        url=url,
        payload=payload,
        job_id=job_id,
        batch_id=batch_id,
        attempt=attempt,
        trigger=trigger,
        status="pending",
        scheduled_at=scheduled_at or utcnow(),
    )
    session.add(row)
    session.flush()
    return row


def get_delivery(session: Session, delivery_id: int) -> WebhookDelivery | None:
    return session.get(WebhookDelivery, delivery_id)


def claim_delivery(session: Session, delivery_id: int) -> WebhookDelivery | None:
    """pending -> sending, once: a task delivered twice (acks_late) sends the attempt once."""
    claimed = session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.status == "pending")
        .values(status="sending", started_at=utcnow())
        .returning(WebhookDelivery.id)
    ).first()
    if claimed is None:
        return None
    session.expire_all()
    return session.get(WebhookDelivery, delivery_id)


def finish_delivery(
    session: Session,
    delivery_id: int,
    *,
    status: str,
    response_status: int | None = None,
    response_body: str | None = None,
    error: str | None = None,
    duration_ms: float | None = None,
    claimed_at: datetime | None = None,
) -> None:
    """``claimed_at``: the claim's ``started_at``; a sender whose attempt was released as
    stuck and claimed again meanwhile writes nothing."""
    fence = [] if claimed_at is None else [WebhookDelivery.started_at == claimed_at]
    session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.status == "sending", *fence)
        .values(
            status=status,
            response_status=response_status,
            response_body=response_body[:2000] if response_body else response_body,
            error=error[:2000] if error else error,
            duration_ms=duration_ms,
            finished_at=utcnow(),
        )
    )


def list_deliveries(
    session: Session, *, job_id: str | None = None, batch_id: str | None = None, limit: int = 200
) -> Sequence[WebhookDelivery]:
    query = select(WebhookDelivery).order_by(WebhookDelivery.id).limit(limit)
    if job_id is not None:
        query = query.where(WebhookDelivery.job_id == job_id)
    if batch_id is not None:
        query = query.where(WebhookDelivery.batch_id == batch_id)
    return session.scalars(query).all()


def latest_event_attempt(
    session: Session, *, job_id: str | None = None, batch_id: str | None = None
) -> WebhookDelivery | None:
    """The last attempt of the latest event of a job or batch (what a manual re-send repeats)."""
    query = select(WebhookDelivery).order_by(WebhookDelivery.id.desc()).limit(1)
    if job_id is not None:
        query = query.where(WebhookDelivery.job_id == job_id)
    if batch_id is not None:
        query = query.where(WebhookDelivery.batch_id == batch_id)
    return session.scalars(query).first()


def next_attempt_number(session: Session, event_id: str) -> int:
    current = session.scalar(
        select(func.max(WebhookDelivery.attempt)).where(WebhookDelivery.event_id == event_id)
    )
    return int(current or 0) + 1


def release_stuck_sending(session: Session, *, stuck_after_s: float, limit: int = 500) -> Sequence[int]:
    """Attempts in ``sending`` for longer than any send may take: their worker died mid-POST.
    They go back to ``pending`` (and are sent again: at least once; receivers de-duplicate on
    ``webhook-id``). Should the old sender still answer, its ``finish_delivery`` matches the
    new claim's ``started_at`` no more and is dropped."""
    cutoff = utcnow() - timedelta(seconds=stuck_after_s)
    stuck = (
        select(WebhookDelivery.id)
        .where(WebhookDelivery.status == "sending", WebhookDelivery.started_at < cutoff)
        .order_by(WebhookDelivery.id)
        .limit(limit)
    )
    return session.scalars(
        update(WebhookDelivery)
        .where(WebhookDelivery.id.in_(stuck.scalar_subquery()), WebhookDelivery.status == "sending")
        .values(status="pending", started_at=None)
        .returning(WebhookDelivery.id)
    ).all()


def stale_pending_deliveries(session: Session, *, grace_s: float, limit: int = 500) -> Sequence[int]:
    """Attempts due for a while but never picked up: their task was lost (broker outage
    between commit and send, or a worker that held the countdown task died)."""
    cutoff = utcnow() - timedelta(seconds=grace_s)
    return session.scalars(
        select(WebhookDelivery.id)
        .where(WebhookDelivery.status == "pending", WebhookDelivery.scheduled_at < cutoff)
        .order_by(WebhookDelivery.id)
        .limit(limit)
    ).all()
