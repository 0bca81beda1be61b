"""Batch submit-and-poll: many items, one job each, accepted at once and run in parallel.

Accepting 10,000 items must take seconds, not minutes: configs are validated once per
distinct ``ensemble_config``, the rows go in with one pipelined INSERT in one transaction, and
after that commit the tasks go to the broker over one producer connection: the first chunk
before the answer, the rest in a background thread of the API (about 0.6 ms per item).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from api.errors import ApiError
from api.guards import charge
from api.schemas.batch import BatchRequest
from api.services import config_service, job_cancel, job_service, limits, routing_service, webhook_service
from api.services.messages import build_generation, instruction_messages
from api.state import AppState
from ensemble_core.spec import EnsembleConfig, EnsembleSpec
from jobqueue.celery_config import BROKER_ERRORS, enqueue_jobs
from jobqueue.contract import MODELS_QUEUE
from jobqueue.webhook_events import record_finished_batch
from persistence import batch_repository
from persistence.models import Batch, Job, new_id

log = logging.getLogger(__name__)

FIRST_CHUNK = 100  # items sent before the 202 answer (more than a worker takes at once)
CHUNK = 1000  # items per background send (and per "mark as sent" update)


def check_size(state: AppState, count: int, *, param: str) -> None:
    """A batch holds at most ``max_batch_items`` items (413)."""
    if count > state.settings.max_batch_items:
        raise ApiError(
            413,
            f"{count} items is more than the {state.settings.max_batch_items} one batch may hold; split it",
            code="batch_too_large",
            param=param,
        )


def create_batch(
    state: AppState, body: BatchRequest, *, tenant: str | None = None, restricted: bool = False
) -> Batch:
    """``restricted``: a tenant's batch, whose configs may only use names (``request_policy``)."""
    check_size(state, len(body.examples), param="examples")
    if body.webhook_url:
        job_service.check_webhook_url(state, body.webhook_url)
    charge(state, tenant, len(body.examples) - 1)  # the request itself counted one
    job_service.refuse_when_queue_full(state, adding=len(body.examples), tenant=tenant)
    version, spec = config_service.current_version(state.db)
    batch_id = new_id("batch")
    configs: dict[str, EnsembleConfig] = {}
    rows: list[dict[str, Any]] = []
    for index, example in enumerate(body.examples):
        overrides = {**(body.ensemble_config or {}), **(example.ensemble_config or {})}
        key = json.dumps(overrides, sort_keys=True, default=str)
        if key not in configs:
            configs[key] = _item_config(spec, overrides, body, index, restricted)
        generation = build_generation(
            instruction_messages(example.instruction, example.input),
            max_tokens=example.max_tokens or body.max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            seed=body.seed,
        )
        limits.check_request_limits(
            state.settings, generation, configs[key], param_prefix=f"examples.{index}."
        )
        rows.append(
            {
                "id": new_id("job"),
                "kind": "batch_item",
                "request": {
                    "generation": generation.model_dump(mode="json"),
                    "ensemble_config": configs[key].model_dump(mode="json"),
                    "endpoint": "batch",
                    "segment_events": False,  # nobody streams a batch item
                },
                "config_version_id": version.id,
                "batch_id": batch_id,
                "batch_index": index,
            }
        )
    metadata = {"batch_size": body.batch_size, "metadata": body.metadata or {}}
    return store_and_enqueue(
        state, batch_id, rows, webhook_url=body.webhook_url, metadata=metadata, tenant=tenant
    )


def store_and_enqueue(
    state: AppState,
    batch_id: str,
    rows: list[dict[str, Any]],
    *,
    webhook_url: str | None = None,
    metadata: dict[str, Any] | None = None,
    also_store: Callable[[Session], None] | None = None,
    tenant: str | None = None,
) -> Batch:
    """Store the batch and its item rows in one transaction (with ``also_store``'s rows, e.g.
    the OpenAI Batch API's link to its input file), then send the items to the broker.

    The batch and its items belong to ``tenant`` (None: the open, keyless mode). With the
    broker down the batch is accepted all the same: its items wait in Postgres, unsent, and
    the sweeper sends them once the broker is back (the job table is the outbox)."""
    default_deadline = min(state.settings.job_deadline_s, state.settings.max_job_deadline_s)
    queues: dict[str, str] = {}
    for row in rows:
        row["tenant"], row["tenant_key"] = tenant, tenant or ""
        row["request"].setdefault("deadline_s", default_deadline)
        queue = routing_service.route_job(state, row.get("config_version_id"), row["request"].get("models"))
        if queue != MODELS_QUEUE:
            row["request"]["queue"] = queues[row["id"]] = queue
    with state.db.transaction() as session:
        batch_repository.create_batch(
            session,
            batch_id=batch_id,
            total=len(rows),
            webhook_url=webhook_url,
            metadata=metadata,
            tenant=tenant,
        )
        batch_repository.insert_batch_jobs(session, rows)
        if also_store is not None:
            also_store(session)
    ids = [r["id"] for r in rows]
    # the first chunk goes out before answering (the items start at once); the rest follows
    # in the background
    first, rest = ids[:FIRST_CHUNK], ids[FIRST_CHUNK:]
    try:
        enqueue_jobs(state.celery, first, queues=queues)
    except BROKER_ERRORS as exc:
        log.warning("batch %s: broker unavailable, the sweeper sends its items later: %s", batch_id, exc)
        return load_batch(state, batch_id)
    with state.db.transaction() as session:
        batch_repository.mark_batch_enqueued(session, batch_id, first)
    if rest:
        state.background.submit(_enqueue_rest, state, batch_id, rest, queues)
    return load_batch(state, batch_id)


def _enqueue_rest(state: AppState, batch_id: str, job_ids: list[str], queues: dict[str, str]) -> None:
    """Send the remaining items chunk by chunk, marking each chunk as sent. Should this stop
    (broker outage, process exit), the items stay queued and unsent, and the sweeper sends them."""
    for start in range(0, len(job_ids), CHUNK):
        chunk = job_ids[start : start + CHUNK]
        try:
            if load_batch(state, batch_id).status in ("cancelling", "cancelled", "failed"):
                return  # its queued items are cancelled already: nothing left to run
            enqueue_jobs(state.celery, chunk, queues=queues)
            with state.db.transaction() as session:
                batch_repository.mark_batch_enqueued(session, batch_id, chunk)
        except Exception as exc:  # noqa: BLE001 - the sweeper sends what is left
            log.warning("batch %s: enqueue stopped after %d items: %s", batch_id, start, exc)
            return


def _item_config(
    spec: EnsembleSpec, overrides: dict[str, Any], body: BatchRequest, index: int, restricted: bool
) -> EnsembleConfig:
    try:
        return config_service.merge_config(
            spec,
            overrides,
            restricted=restricted,
            max_rounds=body.max_rounds,
            score_threshold=body.score_threshold,
        )
    except ApiError as exc:
        raise ApiError(
            exc.status,
            f"examples[{index}]: {exc.message}",
            code=exc.code,
            param=f"examples.{index}.{exc.param or 'ensemble_config'}",
        ) from exc


def load_batch(state: AppState, batch_id: str, *, tenant: str | None = None) -> Batch:
    """The batch, if it is ``tenant``'s (None: any); another tenant's batch is a 404 too."""
    with state.db.transaction() as session:
        batch = batch_repository.get_batch(session, batch_id, tenant=tenant)
    if batch is None:
        raise ApiError(404, f"no batch with id {batch_id!r}", code="batch_not_found", param="batch_id")
    return batch


_CANCEL_ATTEMPTS = 3
_RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})  # deadlock_detected, serialization_failure


def _sqlstate(exc: OperationalError) -> str | None:
    orig = getattr(exc, "orig", None)
    return getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)


def cancel_batch(state: AppState, batch_id: str) -> Batch:
    """Queued items are cancelled, running ones are cancelled and stop within a decode step
    (their partial answers kept), finished ones are kept; the batch is ``cancelled`` at once."""
    batch = load_batch(state, batch_id)
    if batch.status in ("cancelling", "cancelled"):
        return batch
    if batch.status in ("completed", "failed"):
        raise ApiError(
            409,
            f"batch {batch_id} is already {batch.status}; nothing to cancel",
            code="batch_not_cancellable",
            param="batch_id",
        )
    for attempt in range(_CANCEL_ATTEMPTS):
        deliveries: list[int] = []
        try:
            with state.db.transaction() as session:
                final, _count, running = batch_repository.cancel_batch(session, batch_id)
                if final is not None:
                    delivery = record_finished_batch(session, batch_id)
                    deliveries = [delivery] if delivery is not None else []
            break
        except OperationalError as exc:
            # the cancel's row locks can meet a worker settling an item of the same batch in the
            # other order; Postgres aborts one side (deadlock / serialization): run it again
            if _sqlstate(exc) not in _RETRYABLE_SQLSTATES or attempt == _CANCEL_ATTEMPTS - 1:
                raise
    webhook_service.send(state, deliveries)
    job_cancel.tell_workers(state, running)
    return load_batch(state, batch_id)


# ---------------------------------------------------------------- views


def batch_view(batch: Batch) -> dict[str, Any]:
    meta = batch.metadata_ or {}
    return {
        "id": batch.id,
        "object": "batch",
        "endpoint": "/v1/ensemble/batch",
        "status": batch.status,
        "request_counts": {
            "total": batch.total,
            "completed": batch.completed,
            "failed": batch.failed,
            "cancelled": batch.cancelled,
        },
        "created_at": _ts(batch.created_at),
        "in_progress_at": _ts(batch.started_at),
        "cancelling_at": _ts(batch.cancelling_at),
        "completed_at": _ts(batch.finished_at) if batch.status == "completed" else None,
        "cancelled_at": _ts(batch.finished_at) if batch.status == "cancelled" else None,
        "failed_at": _ts(batch.finished_at) if batch.status == "failed" else None,
        "batch_size": meta.get("batch_size"),
        "metadata": meta.get("metadata") or {},
        "results_url": f"/v1/ensemble/batch/{batch.id}/results",
    }


def item_view(job: Job) -> dict[str, Any]:
    result = job.result or {}
    generation = (job.request or {}).get("generation") or {}
    messages = generation.get("messages") or []
    return {
        "index": job.batch_index,
        "id": job.id,
        "status": job.status,
        "input": next((m["content"] for m in reversed(messages) if m.get("role") == "user"), None),
        "result": (
            {
                "output": result.get("text", ""),
                "selected_models": result.get("selected_models", []),
                "method": result.get("method"),
                "finish_reason": result.get("finish_reason"),
                "usage": result.get("usage"),
            }
            if job.status == "succeeded"
            else None
        ),
        "error": (
            {"code": job.error_code, "message": job.error_message}
            if job.status in ("failed", "cancelled")
            else None
        ),
    }


def results_page(state: AppState, batch_id: str, *, after: int, limit: int) -> dict[str, Any]:
    load_batch(state, batch_id)
    with state.db.transaction() as session:
        rows = batch_repository.batch_items(session, batch_id, after=after, limit=limit + 1)
        data = [item_view(j) for j in rows[:limit]]
    return {
        "object": "list",
        "data": data,
        "has_more": len(rows) > limit,
        "last_index": data[-1]["index"] if data else None,
    }


def results_jsonl(state: AppState, batch_id: str) -> Iterator[str]:
    load_batch(state, batch_id)

    def lines() -> Iterator[str]:
        with state.db.sessions() as session:
            for job in batch_repository.iter_batch_items(session, batch_id):
                yield json.dumps(item_view(job), ensure_ascii=False) + "\n"

    return lines()


def _ts(value: Any) -> int | None:
    return int(value.timestamp()) if value is not None else None
