"""Deliver one webhook attempt: sign, POST, store the outcome, schedule the next attempt.

Each attempt is its own ``webhook_deliveries`` row and its own task on the ``webhooks`` queue
(so a slow receiver never holds a model worker's queue). A non-2xx answer, a timeout or a
connection error schedules the next attempt after the configured delay with jitter, until the
schedule is spent. The event id, and so the ``webhook-id`` header, is the same on every attempt.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import timedelta

import httpx

from jobqueue.webhook_policy import (
    CallbackURLRefused,
    WebhookSettings,
    backoff_delay,
    pinned_target,
    signed_headers,
)
from persistence import webhook_repository
from persistence.db import Database
from persistence.models import utcnow

log = logging.getLogger(__name__)

ScheduleRetry = Callable[[int, float], None]


def deliver(
    db: Database,
    delivery_id: int,
    settings: WebhookSettings,
    schedule_retry: ScheduleRetry,
    *,
    client: httpx.Client | None = None,
) -> str:
    """Returns the attempt's outcome: delivered, failed, blocked or skipped."""
    with db.transaction() as session:
        row = webhook_repository.claim_delivery(session, delivery_id)
        if row is None:
            return "skipped"
        url, event_id, payload, attempt = row.url, row.event_id, dict(row.payload), row.attempt
        claimed_at = row.started_at  # fences our outcome write (see release_stuck_sending)
    if not settings.webhook_secret:
        return _record(
            db,
            delivery_id,
            "failed",
            error="ENSEMBLEHUB_WEBHOOK_SECRET is not set on the worker",
            claimed_at=claimed_at,
        )
    try:
        # checked again at send time (DNS may have changed since the API accepted the URL),
        # and the connection goes to the address checked, not to a second lookup's answer
        target = pinned_target(url, settings.allowlist)
    except CallbackURLRefused as exc:
        return _record(db, delivery_id, "blocked", error=str(exc), claimed_at=claimed_at)

    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    headers = signed_headers(settings.webhook_secret, event_id, body)
    started = time.perf_counter()
    status_code: int | None = None
    error: str | None = None
    own_client = client is None
    http = client or httpx.Client(timeout=settings.webhook_timeout_s, follow_redirects=False)
    try:
        options = target.request_options()
        response = http.post(
            target.url,
            content=body.encode(),
            headers={**headers, **options.get("headers", {})},
            extensions=options.get("extensions"),
        )
        # the receiver's body is neither stored nor shown: a tenant could otherwise point a
        # webhook at an internal page and read it back through the delivery log
        status_code = response.status_code
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"
    finally:
        if own_client:
            http.close()
    duration_ms = round((time.perf_counter() - started) * 1000, 1)
    ok = status_code is not None and 200 <= status_code < 300
    if not ok and error is None:
        error = f"receiver answered HTTP {status_code}"
    _record(
        db,
        delivery_id,
        "delivered" if ok else "failed",
        response_status=status_code,
        error=error,
        duration_ms=duration_ms,
        claimed_at=claimed_at,
    )
    if not ok:
        _schedule_next(db, delivery_id, attempt, settings, schedule_retry)
    return "delivered" if ok else "failed"


def _record(db: Database, delivery_id: int, status: str, **fields: object) -> str:
    with db.transaction() as session:
        webhook_repository.finish_delivery(session, delivery_id, status=status, **fields)  # type: ignore[arg-type]
    if status != "delivered":
        log.warning("webhook delivery %s %s: %s", delivery_id, status, fields.get("error"))
    return status


def _schedule_next(
    db: Database, delivery_id: int, attempt: int, settings: WebhookSettings, schedule_retry: ScheduleRetry
) -> None:
    delay = backoff_delay(attempt, settings.retry_delays_s, settings.webhook_retry_jitter)
    if delay is None:
        log.warning("webhook delivery %s: retry schedule spent after %s attempts", delivery_id, attempt)
        return
    with db.transaction() as session:
        previous = webhook_repository.get_delivery(session, delivery_id)
        if previous is None:
            return
        nxt = webhook_repository.add_delivery(
            session,
            event_id=previous.event_id,
            event_type=previous.event_type,
            url=previous.url,
            payload=previous.payload,
            job_id=previous.job_id,
            batch_id=previous.batch_id,
            attempt=webhook_repository.next_attempt_number(session, previous.event_id),
            trigger="retry",
            scheduled_at=utcnow() + timedelta(seconds=delay),
        )
        next_id = nxt.id
    schedule_retry(next_id, delay)
