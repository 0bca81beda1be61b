"""The worker's hot statements on jobs (claim, final transition), built once per process.

Why: building ``update(Job).where(...).values(...).returning(...)`` for every job (argument
coercion, then the cache key SQLAlchemy derives from the new object before it can find the
compiled form) cost more CPU than the statement's round trip. A statement object built once
keeps its memoized cache key, so executing it again with new parameters only binds them.
Every value that changes per job is a ``bindparam``; the shapes that change the SQL (which
columns are set, from which states, fenced or not) pick one cached statement each.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from sqlalchemy import Update, bindparam, update

from persistence import metrics_repository
from persistence.models import Job

_jobs = Job.__table__

# only a queued job can start (one claimant wins); attempts + 1 is the claim's fencing token
CLAIM = (
    update(_jobs)
    .where(_jobs.c.id == bindparam("job_id"), _jobs.c.status == "queued")
    .values(
        status="running",
        started_at=bindparam("now", type_=_jobs.c.started_at.type),
        heartbeat_at=bindparam("now", type_=_jobs.c.heartbeat_at.type),
        worker=bindparam("worker", type_=_jobs.c.worker.type),
        attempts=_jobs.c.attempts + 1,
    )
    .returning(
        _jobs.c.id,
        _jobs.c.kind,
        _jobs.c.request,
        _jobs.c.attempts,
        _jobs.c.config_version_id,
        _jobs.c.batch_id,
        _jobs.c.webhook_url,
        _jobs.c.created_at,
        _jobs.c.started_at,
        _jobs.c.tenant,
    )
)


def claim_params(job_id: str, worker: str, now: Any) -> dict[str, Any]:
    return {"job_id": job_id, "worker": worker, "now": now}


@lru_cache(maxsize=64)
def transition(columns: tuple[str, ...], from_statuses: tuple[str, ...], fenced: bool) -> Update:
    """``UPDATE jobs SET <columns> WHERE id = :job_id AND status IN <from_statuses>
    [AND attempts = :attempt] RETURNING id, batch_id``: a conditional final-state change."""
    # one state: "=" (an IN list is expanded into the SQL string at every execution)
    state = (
        _jobs.c.status == from_statuses[0] if len(from_statuses) == 1 else _jobs.c.status.in_(from_statuses)
    )
    conditions = [_jobs.c.id == bindparam("job_id"), state]
    if fenced:
        conditions.append(_jobs.c.attempts == bindparam("attempt", type_=_jobs.c.attempts.type))
    # "v_" + name: a bindparam named as the column it sets is reserved by SQLAlchemy
    values = {name: bindparam(f"v_{name}", type_=_jobs.c[name].type) for name in columns}
    return update(_jobs).where(*conditions).values(values).returning(_jobs.c.id, _jobs.c.batch_id)


@lru_cache(maxsize=64)
def transition_with_counters(columns: tuple[str, ...], from_statuses: tuple[str, ...], fenced: bool) -> Any:
    """:func:`transition` and its metric counters' upsert in one statement (Postgres), the
    deltas bound per job (:func:`metrics_repository.delta_params`)."""
    return metrics_repository.returning_with_counters(transition(columns, from_statuses, fenced))


def transition_params(
    job_id: str, values: dict[str, Any], attempt: int | None, columns: tuple[str, ...]
) -> dict[str, Any]:
    params = {f"v_{name}": values[name] for name in columns}
    params["job_id"] = job_id
    if attempt is not None:
        params["attempt"] = attempt
    return params
