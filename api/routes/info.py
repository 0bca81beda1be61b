"""``GET /``, ``GET /health`` and ``GET /status``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from api.guards import Principal, optional_principal
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
def status(
    state: AppState = Depends(get_state), principal: Principal | None = Depends(optional_principal)
) -> JSONResponse:
    """Anyone sees the state and the checks; an admin key (or the local keyless mode) also
    the workers, their models and the broker's address."""
    body = service_status(state, detailed=principal is not None and principal.admin)
    return JSONResponse(body, status_code=200 if body["status"] != "unavailable" else 503)


@router.get("/health", responses={503: {"description": "Postgres or Redis is down"}})
def health(state: AppState = Depends(get_state)) -> JSONResponse:
    """Liveness for load balancers and clients (guidellm probes it): 200 while Postgres and
    Redis answer, else 503. Cheap: two pings, no worker listing (that is ``/status``)."""
    checks = {"database": _answers(state.db.ping), "broker": _answers(state.bus.ping)}
    ok = all(checks.values())
    body = {"status": "ok" if ok else "unavailable", "checks": checks}
    return JSONResponse(body, status_code=200 if ok else 503, headers={} if ok else {"Retry-After": "5"})


def _answers(ping: Callable[[], Any]) -> bool:
    try:
        ping()
        return True
    except Exception:  # noqa: BLE001 - any failure means "down"
        return False
