"""Health of the dependencies the service needs: database, broker, workers."""

from __future__ import annotations

import os
from typing import Any

from api.state import AppState
from ensemble_core.methods import list_methods
from persistence import repository


def service_status(state: AppState, *, detailed: bool = True) -> dict[str, Any]:
    """``detailed`` False (no admin key): state and check results only, no host names, pids,
    model paths, addresses or error texts."""
    checks: dict[str, Any] = {}
    try:
        state.db.ping()
        checks["database"] = {"ok": True}
    except Exception as exc:  # noqa: BLE001 - any failure means "down"
        checks["database"] = {"ok": False, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    try:
        state.bus.ping()
        checks["broker"] = {"ok": True, "url": _redact(state.queue_settings.broker_url)}
    except Exception as exc:  # noqa: BLE001
        checks["broker"] = {
            "ok": False,
            "url": _redact(state.queue_settings.broker_url),
            "error": f"{type(exc).__name__}: {exc}"[:200],
        }
    workers: list[dict[str, Any]] = []
    if checks["database"]["ok"]:
        with state.db.transaction() as session:
            for w in repository.live_workers(session):
                workers.append(
                    {
                        "hostname": w.hostname,
                        "pid": w.pid,
                        "last_seen": w.last_seen.isoformat(),
                        "loaded_models": w.loaded_models,
                        # None: any member a job names (no --members)
                        "members": w.members,
                        "queues": w.queues or [],
                    }
                )
    checks["workers"] = {"ok": bool(workers), "count": len(workers)}
    down = not (checks["database"]["ok"] and checks["broker"]["ok"])
    status = "unavailable" if down else ("ok" if workers else "degraded")
    if not detailed:
        return {
            "status": status,
            "mode": "embedded" if state.settings.embedded else "distributed",
            "checks": {
                name: {k: v for k, v in c.items() if k in ("ok", "count")} for name, c in checks.items()
            },
        }
    return {
        "status": status,
        "mode": "embedded" if state.settings.embedded else "distributed",
        "checks": checks,
        # which API process answered (with `--workers N` there are several on one port)
        "api": {"pid": os.getpid()},
        "workers": workers,
        "loaded_models": [m for w in workers for m in w["loaded_models"]],
        # which queues have workers (jobqueue.routing): queue -> the workers reading it
        "routing": {"by_members": state.queue_settings.route_by_members},
        "queues": _queues(workers),
        "available_methods": list_methods(),
    }


def _queues(workers: list[dict[str, Any]]) -> dict[str, list[str]]:
    by_queue: dict[str, list[str]] = {}
    for w in workers:
        for queue in w["queues"]:
            by_queue.setdefault(queue, []).append(w["hostname"])
    return dict(sorted(by_queue.items()))


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
