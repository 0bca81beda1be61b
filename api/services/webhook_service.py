"""Webhook deliveries seen from the API: listing attempts, re-sending by hand, enqueueing."""

from __future__ import annotations

import logging
from typing import Any

from api.errors import ApiError
from api.state import AppState
from jobqueue.celery_config import enqueue_webhooks
from jobqueue.webhook_events import record_manual_resend
from persistence import webhook_repository
from persistence.models import WebhookDelivery

log = logging.getLogger(__name__)


def send(state: AppState, delivery_ids: list[int]) -> None:
    """Enqueue delivery tasks (after the commit that recorded them). A broker failure leaves
    the rows pending; they can be re-sent by hand, so the request itself still succeeds."""
    if not delivery_ids:
        return
    try:
        enqueue_webhooks(state.celery, delivery_ids)
    except Exception as exc:  # noqa: BLE001 - the state change is committed; do not fail it
        log.warning("could not enqueue webhook deliveries %s: %s", delivery_ids, exc)


def list_deliveries(
    state: AppState, *, job_id: str | None = None, batch_id: str | None = None
) -> dict[str, Any]:
    with state.db.transaction() as session:
        rows = webhook_repository.list_deliveries(session, job_id=job_id, batch_id=batch_id)
        data = [delivery_view(r) for r in rows]
    return {"object": "list", "data": data}


def resend(state: AppState, *, job_id: str | None = None, batch_id: str | None = None) -> dict[str, Any]:
    """A new attempt of the latest event, with the same event id (receivers de-duplicate on it)."""
    with state.db.transaction() as session:
        delivery_id = record_manual_resend(session, job_id=job_id, batch_id=batch_id)
        if delivery_id is None:
            owner = f"job {job_id}" if job_id else f"batch {batch_id}"
            raise ApiError(
                409,
                f"{owner} has no webhook event to re-send (no webhook_url, or not finished yet)",
                code="no_webhook_event",
            )
        row = webhook_repository.get_delivery(session, delivery_id)
        view = delivery_view(row) if row is not None else {"id": delivery_id}
    send(state, [delivery_id])
    return view


def delivery_view(row: WebhookDelivery) -> dict[str, Any]:
    return {
        "id": row.id,
        "object": "webhook.delivery",
        "event_id": row.event_id,
        "event_type": row.event_type,
        "job_id": row.job_id,
        "batch_id": row.batch_id,
        "url": row.url,
        "attempt": row.attempt,
        "trigger": row.trigger,
        "status": row.status,
        "response_status": row.response_status,
        "error": row.error,
        "duration_ms": row.duration_ms,
        "created_at": _ts(row.created_at),
        "scheduled_at": _ts(row.scheduled_at),
        "started_at": _ts(row.started_at),
        "finished_at": _ts(row.finished_at),
        "payload": row.payload,
    }


def _ts(value: Any) -> int | None:
    return int(value.timestamp()) if value is not None else None
