"""``GET /`` and ``GET /status``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from api.services.status_service import service_status
from api.state import AppState, get_state

router = APIRouter(tags=["info"])

VERSION = "0.1.0"


@router.get("/")
def root(request: Request) -> dict[str, Any]:
    # from the OpenAPI document: FastAPI keeps included routers as nested route objects
    paths = request.app.openapi().get("paths", {})
    endpoints = sorted(f"{method.upper()} {path}" for path, ops in paths.items() for method in ops)
    return {"name": "Ensemble-Hub", "version": VERSION, "docs": "/docs", "endpoints": endpoints}


@router.get("/status")
def status(state: AppState = Depends(get_state)) -> JSONResponse:
    body = service_status(state)
    return JSONResponse(body, status_code=200 if body["status"] != "unavailable" else 503)
