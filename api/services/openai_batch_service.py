"""OpenAI's Batch API over the same batches and jobs as the guide's ``POST /v1/ensemble/batch``.

Each line of the input file goes through the preparation of ``POST /v1/chat/completions`` (or
``/v1/completions``): same checks, same config merge, same job request, so a line answers
exactly what the endpoint would. The lines become one batch of jobs (``batch_id``,
``batch_index``) stored and sent by ``batch_service``; the link to the input file and the ids
of the output and error files are stored in the same transaction. ``custom_id``, the asked
model and the answer form ride in each job's request for the output file.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session

from api.errors import ApiError
from api.guards import charge
from api.schemas.openai_files import BATCH_ENDPOINTS, BatchCreateRequest
from api.services import batch_service, completion_service, config_service, file_service, job_service
from api.services.file_service import BatchLine
from api.state import AppState
from ensemble_core.spec import EnsembleSpec
from persistence import file_repository
from persistence.batch_repository import FINAL_BATCH_STATUSES
from persistence.models import Batch, ConfigVersion, OpenAIBatch, new_id

# endpoint -> (job kind, answer form, default max_tokens), as the endpoint itself uses them
_ENDPOINT_JOBS: dict[str, tuple[str, completion_service.AnswerForm | None, int]] = {
    "/v1/chat/completions": ("chat", None, 256),
    "/v1/completions": ("completion", "legacy", 16),
}
COMPLETION_WINDOW = timedelta(hours=24)


def create(
    state: AppState, body: BatchCreateRequest, *, tenant: str | None = None, restricted: bool = False
) -> dict[str, Any]:
    if body.endpoint not in BATCH_ENDPOINTS:
        raise ApiError(
            400,
            f"endpoint {body.endpoint!r} is not supported; use one of {', '.join(BATCH_ENDPOINTS)}",
            code="unsupported_endpoint",
            param="endpoint",
        )
    lines = _input_lines(state, body, tenant)
    batch_service.check_size(state, len(lines), param="input_file_id")
    charge(state, tenant, len(lines) - 1)  # the request itself counted one
    job_service.refuse_when_queue_full(state, adding=len(lines), tenant=tenant)
    current = config_service.current_version(state.db)
    batch_id = new_id("batch")
    rows = [
        _job_row(state, body.endpoint, line, batch_id, index, current, restricted)
        for index, line in enumerate(lines)
    ]

    def link(session: Session) -> None:
        file_repository.create_openai_batch(
            session,
            batch_id=batch_id,
            input_file_id=body.input_file_id,
            endpoint=body.endpoint,
            completion_window=body.completion_window,
        )

    metadata = {"batch_size": None, "metadata": body.metadata or {}}
    batch_service.store_and_enqueue(state, batch_id, rows, metadata=metadata, also_store=link, tenant=tenant)
    return retrieve(state, batch_id, tenant=tenant)


def _input_lines(state: AppState, body: BatchCreateRequest, tenant: str | None) -> list[BatchLine]:
    with state.db.transaction() as session:
        upload = file_repository.get_file(session, body.input_file_id, tenant=tenant)
        content = file_repository.file_content(session, body.input_file_id) if upload else None
    if upload is None or content is None:
        raise ApiError(
            404, f"no file with id {body.input_file_id!r}", code="file_not_found", param="input_file_id"
        )
    if upload.kind != "upload" or upload.purpose != "batch":
        raise ApiError(
            400,
            f"file {upload.id} has purpose {upload.purpose!r}; upload the input with purpose 'batch'",
            code="invalid_input_file",
            param="input_file_id",
        )
    lines = file_service.parse_batch_file(content, max_lines=state.settings.max_batch_items)
    for line in lines:
        if line.url != body.endpoint:
            raise ApiError(
                400,
                f"line {line.number} (custom_id {line.custom_id!r}) calls {line.url}, but the batch's "
                f"endpoint is {body.endpoint}; every line must call the batch's endpoint",
                code="invalid_batch_file",
                param="input_file_id",
            )
    return lines


def _job_row(
    state: AppState,
    endpoint: str,
    line: BatchLine,
    batch_id: str,
    index: int,
    current: tuple[ConfigVersion, EnsembleSpec],
    restricted: bool,
) -> dict[str, Any]:
    kind, form, default_max_tokens = _ENDPOINT_JOBS[endpoint]
    try:
        prepared = completion_service.prepare(
            state,
            line.body,
            kind=kind,
            form=form,
            default_max_tokens=default_max_tokens,
            current=current,
            restricted=restricted,
        )
    except ApiError as exc:
        # 400 whatever the endpoint would answer (e.g. 404 model_not_found): the bad thing
        # here is the input file; a field a tenant may not set stays 403
        raise ApiError(
            403 if exc.status == 403 else 400,
            f"line {line.number} (custom_id {line.custom_id!r}): {exc.message}",
            code=exc.code,
            param="input_file_id",
        ) from exc
    request = {
        "generation": prepared.generation.model_dump(mode="json"),
        "ensemble_config": prepared.config.model_dump(mode="json"),
        **prepared.extra,
        "custom_id": line.custom_id,
        "model": prepared.model,
        "form": prepared.form,
        "segment_events": False,  # nobody streams a batch item
    }
    return {
        "id": new_id("job"),
        "kind": "batch_item",
        "request": request,
        "config_version_id": prepared.config_version_id,
        "batch_id": batch_id,
        "batch_index": index,
    }


def _load(state: AppState, batch_id: str, tenant: str | None) -> tuple[OpenAIBatch, Batch]:
    with state.db.transaction() as session:
        found = file_repository.get_openai_batch(session, batch_id, tenant=tenant)
    if found is None:
        raise ApiError(
            404,
            f"no batch with id {batch_id!r} (batches of POST /v1/ensemble/batch are under that path)",
            code="batch_not_found",
            param="batch_id",
        )
    return found


def retrieve(state: AppState, batch_id: str, *, tenant: str | None = None) -> dict[str, Any]:
    return batch_view(*_load(state, batch_id, tenant))


def cancel(state: AppState, batch_id: str, *, tenant: str | None = None) -> dict[str, Any]:
    """Queued and running items are cancelled (running ones stop within a decode step)."""
    link, _ = _load(state, batch_id, tenant)
    return batch_view(link, batch_service.cancel_batch(state, batch_id))


def list_view(state: AppState, *, limit: int, after: str | None, tenant: str | None = None) -> dict[str, Any]:
    with state.db.transaction() as session:
        rows = file_repository.list_openai_batches(session, limit=limit + 1, after=after, tenant=tenant)
        data = [batch_view(link, batch) for link, batch in rows[:limit]]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": len(rows) > limit,
    }


def batch_view(link: OpenAIBatch, batch: Batch) -> dict[str, Any]:
    """OpenAI's batch object. Its three counts: items cancelled before they ran count as
    failed (they are in the error file). The output and error file ids appear once the batch
    has ended, and only when that file has lines."""
    final = batch.status in FINAL_BATCH_STATUSES
    not_completed = batch.failed + batch.cancelled
    meta = batch.metadata_ or {}
    return {
        "id": batch.id,
        "object": "batch",
        "endpoint": link.endpoint,
        "errors": None,
        "input_file_id": link.input_file_id,
        "completion_window": link.completion_window,
        "status": batch.status,
        "output_file_id": link.output_file_id if final and batch.completed else None,
        "error_file_id": link.error_file_id if final and not_completed else None,
        "created_at": _ts(batch.created_at),
        "in_progress_at": _ts(batch.started_at),
        "expires_at": _ts(batch.created_at + COMPLETION_WINDOW),
        "finalizing_at": None,
        "completed_at": _ts(batch.finished_at) if batch.status == "completed" else None,
        "failed_at": _ts(batch.finished_at) if batch.status == "failed" else None,
        "expired_at": None,
        "cancelling_at": _ts(batch.cancelling_at),
        "cancelled_at": _ts(batch.finished_at) if batch.status == "cancelled" else None,
        "request_counts": {"total": batch.total, "completed": batch.completed, "failed": not_completed},
        "metadata": meta.get("metadata") or {},
    }


def _ts(value: Any) -> int | None:
    return int(value.timestamp()) if value is not None else None
