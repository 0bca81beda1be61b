"""OpenAI's Files API over Postgres.

A batch input file is checked line by line when it is uploaded, so a mistake shows at once with
its line number rather than as a failed batch later. A batch's output and error files are
written from its jobs the first time either is asked for after the batch ended (its jobs no
longer change then), and stored, so every later read returns the same bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from pydantic import ValidationError

from api.errors import ApiError
from api.schemas.openai import PromptFields
from api.schemas.openai_files import BATCH_ENDPOINTS, BatchInputLine
from api.services import batch_output
from api.state import AppState
from persistence import file_repository
from persistence.batch_repository import FINAL_BATCH_STATUSES
from persistence.models import StoredFile

SUPPORTED_PURPOSES = ("batch",)
MAX_ERRORS_SHOWN = 5


@dataclass(frozen=True)
class BatchLine:
    number: int  # 1-based line number in the file
    custom_id: str
    url: str
    body: PromptFields


def parse_batch_file(content: bytes, *, max_lines: int) -> list[BatchLine]:
    """Every request of a batch input file, or a 400 that names the first bad lines."""
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _invalid(f"the file is not UTF-8 text (byte {exc.start})") from exc
    lines: list[BatchLine] = []
    errors: list[str] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            line = _parse_line(raw)
            if line.custom_id in seen:
                raise ValueError(f"custom_id {line.custom_id!r} repeats line {seen[line.custom_id]}")
        except ValueError as exc:
            errors.append(f"line {number}: {exc}")
            continue
        seen[line.custom_id] = number
        lines.append(replace(line, number=number))
    if errors:
        more = f" (and {len(errors) - MAX_ERRORS_SHOWN} more)" if len(errors) > MAX_ERRORS_SHOWN else ""
        raise _invalid("; ".join(errors[:MAX_ERRORS_SHOWN]) + more)
    if not lines:
        raise _invalid("the file holds no requests (one JSON object per line)")
    if len(lines) > max_lines:
        raise _invalid(f"{len(lines)} requests is more than the {max_lines} one batch may hold; split it")
    return lines


def _parse_line(raw: str) -> BatchLine:
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})") from exc
    try:
        line = BatchInputLine.model_validate(data)
    except ValidationError as exc:
        raise ValueError(_pydantic_message(exc)) from exc
    wire = BATCH_ENDPOINTS.get(line.url)
    if wire is None:
        raise ValueError(f"url {line.url!r} is not supported; use one of {', '.join(BATCH_ENDPOINTS)}")
    try:
        body = wire.model_validate(line.body)
    except ValidationError as exc:
        raise ValueError(_pydantic_message(exc, prefix="body")) from exc
    if body.stream:
        raise ValueError("body.stream: a batch request cannot stream; leave 'stream' out")
    if body.webhook_url:
        raise ValueError("body.webhook_url: not available per request in a batch; poll the batch")
    return BatchLine(number=0, custom_id=line.custom_id, url=line.url, body=body)


def _pydantic_message(exc: ValidationError, prefix: str = "") -> str:
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(p) for p in (prefix, *err.get("loc", ())) if p != "")
        parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
    return "; ".join(parts)


def _invalid(message: str) -> ApiError:
    return ApiError(400, f"invalid batch input file: {message}", code="invalid_batch_file", param="file")


# ---------------------------------------------------------------- files


def upload(
    state: AppState, *, filename: str, purpose: str, content: bytes, tenant: str | None = None
) -> StoredFile:
    if purpose not in SUPPORTED_PURPOSES:
        raise ApiError(
            400,
            f"purpose {purpose!r} is not supported here; use 'batch' (requests for POST /v1/batches)",
            code="unsupported_purpose",
            param="purpose",
        )
    lines = parse_batch_file(content, max_lines=state.settings.max_batch_items)
    with state.db.transaction() as session:
        return file_repository.create_file(
            session,
            filename=filename or "upload.jsonl",
            purpose=purpose,
            content=content,
            lines=len(lines),
            tenant=tenant,
        )


def load_file(state: AppState, file_id: str, *, tenant: str | None = None) -> StoredFile:
    """A stored file, or a batch's output/error file written now if its batch has ended.
    Only ``tenant``'s files (None: any); another tenant's file is a 404 too."""
    with state.db.transaction() as session:
        row = file_repository.get_file(session, file_id, tenant=tenant)
        generated = file_repository.batch_of_generated_file(session, file_id) if row is None else None
    if row is not None:
        return row
    if generated is not None and tenant is not None and generated[1].tenant != tenant:
        generated = None
    if generated is None:
        raise ApiError(404, f"no file with id {file_id!r}", code="file_not_found", param="file_id")
    link, batch = generated
    if batch.status not in FINAL_BATCH_STATUSES:
        raise ApiError(
            409,
            f"file {file_id} is written when batch {batch.id} ends (it is {batch.status})",
            code="file_not_ready",
            param="file_id",
        )
    kind = batch_output.OUTPUT if file_id == link.output_file_id else batch_output.ERRORS
    content, lines = batch_output.render(state, batch.id, kind)
    name = "output" if kind == batch_output.OUTPUT else "errors"
    with state.db.transaction() as session:
        return file_repository.store_generated_file(
            session,
            file_id=file_id,
            kind=kind,
            batch_id=batch.id,
            filename=f"{batch.id}_{name}.jsonl",
            content=content,
            lines=lines,
            tenant=batch.tenant,
        )


def load_content(state: AppState, file_id: str, *, tenant: str | None = None) -> bytes:
    load_file(state, file_id, tenant=tenant)
    with state.db.transaction() as session:
        content = file_repository.file_content(session, file_id)
    return content or b""


def file_view(row: StoredFile) -> dict[str, Any]:
    return {
        "id": row.id,
        "object": "file",
        "bytes": row.bytes,
        "created_at": int(row.created_at.timestamp()),
        "filename": row.filename,
        "purpose": row.purpose,
        "status": "processed",
        "status_details": None,
        "expires_at": None,
    }


def list_view(
    state: AppState, *, purpose: str | None, limit: int, after: str | None, tenant: str | None = None
) -> dict[str, Any]:
    with state.db.transaction() as session:
        rows = file_repository.list_files(
            session, purpose=purpose, limit=limit + 1, after=after, tenant=tenant
        )
        data = [file_view(r) for r in rows[:limit]]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": len(rows) > limit,
    }
