"""OpenAI's Files API: ``/v1/files`` (upload batch input, describe, download, list)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, File, Form, Query, UploadFile
from fastapi.responses import Response

from api.guards import Principal, require_api_key
from api.services import file_service
from api.state import AppState, get_state

router = APIRouter(prefix="/v1/files", tags=["files"])


@router.post("")
def upload_file(
    file: UploadFile = File(..., description="JSONL: one /v1/chat/completions request per line"),
    purpose: str = Form(..., description="'batch'"),
    state: AppState = Depends(get_state),
    principal: Principal = Depends(require_api_key),
) -> dict[str, Any]:
    """Store a batch input file; every line is checked now (400 names the bad lines)."""
    content = file.file.read()
    return file_service.file_view(
        file_service.upload(
            state, filename=file.filename or "", purpose=purpose, content=content, tenant=principal.tenant
        )
    )


@router.get("")
def list_files(
    purpose: str | None = None,
    limit: int = Query(default=100, ge=1, le=10_000),
    after: str | None = None,
    state: AppState = Depends(get_state),
    principal: Principal = Depends(require_api_key),
) -> dict[str, Any]:
    return file_service.list_view(state, purpose=purpose, limit=limit, after=after, tenant=principal.tenant)


@router.get("/{file_id}")
def get_file(
    file_id: str, state: AppState = Depends(get_state), principal: Principal = Depends(require_api_key)
) -> dict[str, Any]:
    return file_service.file_view(file_service.load_file(state, file_id, tenant=principal.tenant))


@router.get("/{file_id}/content", response_class=Response)
def file_content(
    file_id: str, state: AppState = Depends(get_state), principal: Principal = Depends(require_api_key)
) -> Response:
    """The file's bytes; a batch's output and error files hold one JSON line per request,
    named by its ``custom_id``."""
    return Response(
        file_service.load_content(state, file_id, tenant=principal.tenant), media_type="application/jsonl"
    )
