"""Repository functions over the rows. They flush but never commit: the caller owns the transaction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, tuple_, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from persistence import job_statements, metrics_repository
from persistence.batch_repository import count_batch_items
from persistence.models import (
    FINAL_JOB_STATUSES,
    ConfigVersion,
    Job,
    WorkerHeartbeat,
    new_id,
    utcnow,
)
from persistence.paging import after_anchor


@dataclass(frozen=True)
class Settled:
    """What the one call that moved a job to a final state returns (others get None).

    ``batch_status`` is set only when this transition was the batch's last open item, so the
    caller that sees it is the one that emits the batch's final event.
    """

    job_id: str
    status: str
    batch_id: str | None = None
    batch_status: str | None = None
    # the final row as this transition wrote it, when the caller knew the rest of it (a worker
    # settling its claim): the webhook event is built from it instead of re-reading the row
    snapshot: Job | None = None


_BATCH_COUNTER = {"succeeded": "completed", "failed": "failed", "cancelled": "cancelled"}


def settlement(session: Session, row: Any, status: str) -> Settled | None:
    """Count the item in its batch (and the job in the metric counters) in the same
    transaction as its state change: the state change is conditional, so the counters move
    exactly once per item."""
    if row is None:
        return None
    job_id, batch_id = row
    batch_status = None
    if batch_id is not None:
        batch_status = count_batch_items(session, batch_id, **{_BATCH_COUNTER[status]: 1})
    metrics_repository.record_final_job(session, job_id, status)
    return Settled(job_id=job_id, status=status, batch_id=batch_id, batch_status=batch_status)


# ---------------------------------------------------------------- config versions


def latest_config_version(session: Session) -> ConfigVersion | None:
    return session.scalars(select(ConfigVersion).order_by(ConfigVersion.version.desc()).limit(1)).first()


def get_config_version(session: Session, version_id: int) -> ConfigVersion | None:
    return session.get(ConfigVersion, version_id)


def list_config_versions(session: Session, *, limit: int = 100, offset: int = 0) -> Sequence[ConfigVersion]:
    return session.scalars(
        select(ConfigVersion).order_by(ConfigVersion.version.desc()).limit(limit).offset(offset)
    ).all()


def append_config_version(
    session: Session, *, spec: dict[str, Any], content_hash: str, note: str | None = None
) -> ConfigVersion:
    """Append version n+1. Rows are never updated, so every job's version stays reproducible.

    Concurrent appends race on the unique ``version`` column; the loser's transaction fails
    and the caller may retry.
    """
    current = session.scalar(select(func.max(ConfigVersion.version))) or 0
    row = ConfigVersion(version=current + 1, content_hash=content_hash, spec=spec, note=note)
    session.add(row)
    session.flush()
    return row


# ---------------------------------------------------------------- jobs


def create_job(
    session: Session,
    *,
    kind: str,
    request: dict[str, Any],
    config_version_id: int | None,
    webhook_url: str | None = None,
    idempotency_key: str | None = None,
    tenant: str | None = None,
    batch_id: str | None = None,
    batch_index: int | None = None,
    job_id: str | None = None,
) -> Job:
    job = Job(
        id=job_id or new_id("job"),
        kind=kind,
        status="queued",
        request=request,
        config_version_id=config_version_id,
        webhook_url=webhook_url,
        idempotency_key=idempotency_key,
        tenant=tenant,
        tenant_key=tenant or "",
        batch_id=batch_id,
        batch_index=batch_index,
    )
    session.add(job)
    session.flush()
    return job


def new_job_row(
    *,
    kind: str,
    request: dict[str, Any],
    config_version_id: int | None,
    webhook_url: str | None = None,
    idempotency_key: str | None = None,
    tenant: str | None = None,
    job_id: str | None = None,
) -> dict[str, Any]:
    """Every column of a new queued job, for an INSERT of many (``api.services.group_commit``);
    ``Job(**row)`` is the job as stored."""
    return {
        "id": job_id or new_id("job"),
        "kind": kind,
        "status": "queued",
        "request": request,
        "config_version_id": config_version_id,
        "webhook_url": webhook_url,
        "idempotency_key": idempotency_key,
        "tenant": tenant,
        "tenant_key": tenant or "",
        "attempts": 0,
        "created_at": utcnow(),
    }


def get_job(session: Session, job_id: str, *, tenant: str | None = None) -> Job | None:
    job = session.get(Job, job_id)
    if job is None or (tenant is not None and job.tenant != tenant):
        return None
    return job


def find_job_by_idempotency_key(session: Session, key: str, *, tenant: str | None = None) -> Job | None:
    return session.scalars(
        select(Job).where(Job.idempotency_key == key, Job.tenant_key == (tenant or ""))
    ).first()


def list_jobs(
    session: Session,
    *,
    status: str | None = None,
    tenant: str | None = None,
    limit: int = 20,
    after: str | None = None,
    batch_id: str | None = None,
) -> Sequence[Job]:
    query = select(Job).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
    if status:
        query = query.where(Job.status == status)
    if batch_id:
        query = query.where(Job.batch_id == batch_id)
    if tenant is not None:
        query = query.where(Job.tenant == tenant)
    query = after_anchor(session, query, Job, after)
    return session.scalars(query).all()


def mark_enqueued(bind: Session | Connection, job_ids: Sequence[str]) -> None:
    """One statement: on a connection (Core, no ORM bookkeeping) it may run in autocommit."""
    bind.execute(update(Job).where(Job.id.in_(job_ids)).values(enqueued_at=utcnow()))


def count_jobs(session: Session, *, status: str, tenant: str | None = None) -> int:
    query = select(func.count()).select_from(Job).where(Job.status == status)
    if tenant is not None:
        query = query.where(Job.tenant == tenant)
    return int(session.scalar(query) or 0)


@dataclass(frozen=True)
class ClaimedJob:
    """What a worker needs from the job it claimed, read by the claim's own UPDATE."""

    id: str
    kind: str
    request: dict[str, Any]
    attempts: int
    config_version_id: int | None
    batch_id: str | None
    webhook_url: str | None
    created_at: datetime
    started_at: datetime
    tenant: str | None = None  # whose job (None without auth): the worker's prefix-sharing scope


def claim_job(session: Session | Connection, job_id: str, *, worker: str) -> ClaimedJob | None:
    """Move a queued job to running. Only one claimant wins (conditional update), so a task
    delivered twice under ``acks_late`` runs the job once. One statement: the UPDATE returns
    what the worker needs, so the claim reads nothing else.

    The returned ``attempts`` is this claim's attempt number: the fencing token that the
    claimant's heartbeats, result and failure carry (``attempt=``). Once the sweeper has given
    the job to another worker, the first worker's late writes match no row and change nothing.

    ``session``: a session (the claim joins its transaction) or a connection; the statement is
    atomic on its own, so on an autocommit connection (``Database.statement``) it is the whole
    transaction, without the BEGIN and COMMIT round trips."""
    # on a connection (Core), the statement built once (job_statements): the ORM's execution
    # of an UPDATE (session synchronisation, its own compile state) and building the statement
    # per call cost more than its round trip, and no object of a session can hold the row
    connection = session if isinstance(session, Connection) else session.connection()
    row = connection.execute(
        job_statements.CLAIM, job_statements.claim_params(job_id, worker, utcnow())
    ).first()
    if row is None:
        return None
    return ClaimedJob(
        id=row.id,
        kind=row.kind,
        request=dict(row.request),
        attempts=int(row.attempts),
        config_version_id=row.config_version_id,
        batch_id=row.batch_id,
        webhook_url=row.webhook_url,
        created_at=row.created_at,
        started_at=row.started_at,
        tenant=row.tenant,
    )


def _current_attempt(attempt: int | None) -> list[Any]:
    return [] if attempt is None else [Job.attempts == attempt]


def heartbeat_job(session: Session, job_id: str, *, attempt: int | None = None) -> bool:
    """Touch a running job; False when it is not running (any more) as ``attempt``."""
    row = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "running", *_current_attempt(attempt))
        .values(heartbeat_at=utcnow())
        .returning(Job.id)
    ).first()
    return row is not None


def heartbeat_jobs(session: Session, attempts: Sequence[tuple[str, int]]) -> set[tuple[str, int]]:
    """Touch every job of ``attempts`` (job id, attempt) still running as that attempt, in one
    statement (a worker process beats all its jobs at once: ``workers.job_watch``). Returns the
    pairs still running as their attempt; one left out is cancelled, finished, or re-queued to
    another attempt.

    The beat skips rows another transaction holds (``SKIP LOCKED``): a statement that locks
    many job rows in no set order would otherwise deadlock with a batch cancel (which locks
    its items in another order) and with settlements. A skipped row is judged by its last
    committed state (the beat's snapshot) and beaten at the next tick."""
    if not attempts:
        return set()
    current = tuple_(Job.id, Job.attempts).in_(list(attempts))
    free = (
        select(Job.id)
        .where(Job.status == "running", current)
        .with_for_update(skip_locked=True, key_share=True)
    )
    beat = (
        update(Job)
        .where(Job.id.in_(free.scalar_subquery()))
        .values(heartbeat_at=utcnow())
        .returning(Job.id)
        .cte("beat")
    )
    rows = session.execute(
        select(Job.id, Job.attempts).where(Job.status == "running", current).add_cte(beat)
    ).all()
    return {(job_id, attempt) for job_id, attempt in rows}


def finish_job(
    session: Session,
    job_id: str,
    *,
    result: dict[str, Any],
    usage: dict[str, Any] | None,
    attempt: int | None = None,
    claim: ClaimedJob | None = None,
) -> Settled | None:
    """Store the result once: only a running job (of ``attempt``, when given) can succeed, so a
    second or stale writer changes nothing. ``claim``: the worker's own claim of the job, which
    lets the state change and its counters go in one statement (:func:`settle`)."""
    values: dict[str, Any] = {
        "status": "succeeded",
        "result": result,
        "usage": usage,
        "finished_at": utcnow(),
        "error_code": None,
        "error_message": None,
    }
    return settle(session, job_id, values, from_statuses=("running",), attempt=attempt, claim=claim)


def fail_job(
    session: Session,
    job_id: str,
    *,
    code: str,
    message: str,
    from_statuses: Sequence[str] = ("queued", "running"),
    attempt: int | None = None,
    result: dict[str, Any] | None = None,
    usage: dict[str, Any] | None = None,
    claim: ClaimedJob | None = None,
) -> Settled | None:
    """Fail the job once. ``result``/``usage``: what a job stopped by its deadline had done."""
    values: dict[str, Any] = {
        "status": "failed",
        "error_code": code,
        "error_message": message[:4000],
        "finished_at": utcnow(),
    }
    if result is not None:
        values.update(result=result, usage=usage)
    return settle(session, job_id, values, from_statuses=from_statuses, attempt=attempt, claim=claim)


def settle(
    session: Session | Connection,
    job_id: str,
    values: dict[str, Any],
    *,
    from_statuses: Sequence[str],
    attempt: int | None,
    claim: ClaimedJob | None,
) -> Settled | None:
    """Move the job to the final state in ``values`` if it is in ``from_statuses`` (and is
    ``attempt``), counting it once (:func:`settlement`).

    Without ``claim`` the counters need the row's timestamps and result, read after the
    change. With the claim of the worker that ran the job, everything is known beforehand: on
    Postgres, a job outside a batch settles in one statement (the UPDATE and its counters'
    upsert in one CTE); a batch item, whose batch row is counted after the job's, adds its
    counters at commit as every other transition does (one lock order).

    ``session`` may be a connection only for that one-statement case (:func:`settles_alone`):
    on an autocommit connection the statement is then its own transaction."""
    status = values["status"]
    if claim is None:
        if isinstance(session, Connection):
            raise ValueError("a settlement without the claim needs a session")
        # the ORM's UPDATE, built here: it also updates a row this session holds (the API's
        # and the sweeper's transitions; not a worker's hot path)
        transition = (
            update(Job)
            .where(Job.id == job_id, Job.status.in_(from_statuses), *_current_attempt(attempt))
            .values(**values)
            .returning(Job.id, Job.batch_id)
        )
        return settlement(session, session.execute(transition).first(), status)
    # the worker's own claim: the statement built once (job_statements)
    columns = tuple(sorted(values))
    key = (columns, tuple(from_statuses), attempt is not None)
    params = job_statements.transition_params(job_id, values, attempt, columns)
    deltas = metrics_repository.final_job_deltas(
        status, claim.created_at, claim.started_at, values["finished_at"], values.get("result")
    )
    # the worker's own claim: on a connection (Core), as the claim (claim_job)
    connection = session if isinstance(session, Connection) else session.connection()
    if claim.batch_id is None and metrics_repository.counted_in_one_statement(connection):
        params.update(metrics_repository.delta_params(deltas))
        row = connection.execute(job_statements.transition_with_counters(*key), params).first()
        if row is None:
            return None
        batch_status = None
    else:
        if isinstance(session, Connection):
            raise ValueError("a batch item's settlement (or SQLite's) needs a session")
        row = connection.execute(job_statements.transition(*key), params).first()
        if row is None:
            return None
        batch_status = (
            count_batch_items(session, row.batch_id, **{_BATCH_COUNTER[status]: 1}) if row.batch_id else None
        )
        metrics_repository.add_deltas(session, deltas)
    snapshot = Job(
        id=job_id,
        kind=claim.kind,
        request=claim.request,
        attempts=claim.attempts,
        config_version_id=claim.config_version_id,
        batch_id=row.batch_id,
        webhook_url=claim.webhook_url,
        created_at=claim.created_at,
        started_at=claim.started_at,
        result=values.get("result"),
        usage=values.get("usage"),
        error_code=values.get("error_code"),
        error_message=values.get("error_message"),
        status=status,
        finished_at=values["finished_at"],
    )
    return Settled(
        job_id=job_id, status=status, batch_id=row.batch_id, batch_status=batch_status, snapshot=snapshot
    )


def settles_alone(db_dialect: str, claim: ClaimedJob) -> bool:
    """Whether the settlement of this claim is one statement with nothing else to commit with
    it, so that it may run on an autocommit connection: on Postgres (the counters in the same
    statement, :func:`settle`), outside a batch (whose row is counted after the job's) and
    without a webhook (whose event row must commit with the state change)."""
    return db_dialect == "postgresql" and claim.batch_id is None and not claim.webhook_url


def cancel_job(
    session: Session, job_id: str, *, from_statuses: Sequence[str] = ("queued", "running")
) -> Settled | None:
    """Cancel a job that has not ended. A running one is cancelled here at once (its final
    state); its worker, told to stop, then stores the partial answer with
    :func:`store_partial_result`."""
    row = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(from_statuses))
        .values(
            status="cancelled",
            finished_at=utcnow(),
            error_code="cancelled",
            error_message="cancelled by request",
        )
        .returning(Job.id, Job.batch_id)
    ).first()
    return settlement(session, row, "cancelled")


def store_partial_result(
    session: Session, job_id: str, *, result: dict[str, Any], usage: dict[str, Any] | None, attempt: int
) -> bool:
    """The answer a cancelled job had when its worker stopped: written once, by the attempt
    that was running when it was cancelled (the state is final already; nothing is counted)."""
    row = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "cancelled", Job.attempts == attempt, Job.result.is_(None))
        .values(result=result, usage=usage)
        .returning(Job.id)
    ).first()
    return row is not None


def running_job_ids(session: Session, job_ids: Sequence[str]) -> list[str]:
    return list(session.scalars(select(Job.id).where(Job.id.in_(job_ids), Job.status == "running")))


def is_final(status: str) -> bool:
    return status in FINAL_JOB_STATUSES


# ---------------------------------------------------------------- workers


def upsert_worker_heartbeat(
    session: Session,
    *,
    hostname: str,
    pid: int,
    loaded_models: list[dict[str, Any]],
    members: list[str] | None = None,
    queues: list[str] | None = None,
) -> None:
    row = session.get(WorkerHeartbeat, hostname)
    now = utcnow()
    if row is None:
        session.add(
            WorkerHeartbeat(
                hostname=hostname,
                pid=pid,
                loaded_models=loaded_models,
                members=members,
                queues=queues,
                started_at=now,
                last_seen=now,
            )
        )
    else:
        row.pid = pid
        row.loaded_models = loaded_models
        row.members, row.queues = members, queues
        row.last_seen = now
    session.flush()


def live_workers(session: Session, *, within_s: float = 30.0) -> Sequence[WorkerHeartbeat]:
    since: datetime = utcnow() - timedelta(seconds=within_s)
    return session.scalars(select(WorkerHeartbeat).where(WorkerHeartbeat.last_seen >= since)).all()


def remove_worker(session: Session, hostname: str) -> None:
    row = session.get(WorkerHeartbeat, hostname)
    if row is not None:
        session.delete(row)
