"""The lines of an OpenAI batch's output and error files, written from its finished jobs.

An output line carries the answer ``POST /v1/chat/completions`` would have given; an error line
carries the error envelope it would have answered (``response.status_code`` 4xx/5xx), or, for
an item its batch cancelled before it ran, ``error.code = "batch_cancelled"``. Lines keep the
input order and name their request by ``custom_id``.
"""

from __future__ import annotations

import json
from typing import Any

from api.errors import ApiError, envelope
from api.services import completion_service, job_service
from api.state import AppState
from persistence import batch_repository
from persistence.models import Job

OUTPUT, ERRORS = "batch_output", "batch_error"


def render(state: AppState, batch_id: str, kind: str) -> tuple[bytes, int]:
    """The file's bytes and its number of lines (jobs are read a chunk at a time)."""
    parts: list[str] = []
    with state.db.sessions() as session:
        for job in batch_repository.iter_batch_items(session, batch_id):
            line = output_line(job) if kind == OUTPUT else error_line(job)
            if line is not None:
                parts.append(json.dumps(line, ensure_ascii=False) + "\n")
    return "".join(parts).encode(), len(parts)


def output_line(job: Job) -> dict[str, Any] | None:
    if job.status != "succeeded":
        return None
    request = job.request or {}
    body = completion_service.answer(job, request.get("form") or "chat", request.get("model") or "ensemble")
    return {
        "id": f"batch_req_{job.id}",
        "custom_id": request.get("custom_id"),
        "response": {"status_code": 200, "request_id": job.id, "body": body},
        "error": None,
    }


def error_line(job: Job) -> dict[str, Any] | None:
    request = job.request or {}
    line: dict[str, Any] = {"id": f"batch_req_{job.id}", "custom_id": request.get("custom_id")}
    if job.status == "cancelled":
        message = "the batch was cancelled before this request finished"
        return {**line, "response": None, "error": {"code": "batch_cancelled", "message": message}}
    if job.status != "failed":
        return None
    try:
        job_service.raise_unless_succeeded(job)
    except ApiError as exc:
        body = envelope(exc.status, exc.message, code=exc.code, **exc.extra)
        return {
            **line,
            "response": {"status_code": exc.status, "request_id": job.id, "body": body},
            "error": None,
        }
    return None
