"""Finding jobs that lost their way: never sent to the broker, or orphaned by a dead worker.

Postgres is the truth and Redis only the transport. A queued job whose task never reached the
broker (crash or broker outage between commit and send) is simply a queued row with
``enqueued_at IS NULL``: the job table is its own outbox. A running job whose heartbeat stopped
belongs to a worker that died. Both are found here; the sweeper task acts on them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from persistence.models import Batch, Job, utcnow
from persistence.repository import Settled, settlement


def jobs_to_send(
    session: Session, *, unsent_grace_s: float, resend_after_s: float, limit: int = 1000
) -> Sequence[str]:
    """Queued jobs never handed to the broker (after a short grace for the normal path), or
    handed over so long ago that the message was probably lost (e.g. Redis restarted empty)."""
    now = utcnow()
    return session.scalars(
        select(Job.id)
        .where(
            Job.status == "queued",
            or_(
                (Job.enqueued_at.is_(None)) & (Job.created_at < now - timedelta(seconds=unsent_grace_s)),
                Job.enqueued_at < now - timedelta(seconds=resend_after_s),
            ),
        )
        .order_by(Job.created_at)
        .limit(limit)
    ).all()


def job_queues(session: Session, job_ids: Sequence[str]) -> dict[str, str]:
    """The queue each job was routed to at submission (``request.queue``; jobqueue.routing),
    for the jobs that have one: a job sent again goes where it went the first time."""
    if not job_ids:
        return {}
    rows = session.execute(
        select(Job.id, Job.request["queue"].as_string()).where(Job.id.in_(list(job_ids)))
    ).all()
    return {job_id: queue for job_id, queue in rows if queue}


def orphaned_running_jobs(session: Session, *, dead_after_s: float, limit: int = 1000) -> Sequence[Job]:
    cutoff = utcnow() - timedelta(seconds=dead_after_s)
    return session.scalars(
        select(Job)
        .where(Job.status == "running", Job.heartbeat_at < cutoff)
        .order_by(Job.started_at)
        .limit(limit)
    ).all()


def requeue_orphan(session: Session, job_id: str, *, dead_after_s: float) -> bool:
    """Put a job of a dead worker back in the queue (conditional: only if still orphaned)."""
    cutoff = utcnow() - timedelta(seconds=dead_after_s)
    done = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "running", Job.heartbeat_at < cutoff)
        .values(status="queued", enqueued_at=None, worker=None)
        .returning(Job.id)
    ).first()
    return done is not None


def fail_orphan(session: Session, job_id: str, *, dead_after_s: float, message: str) -> Settled | None:
    """Fail a job of a dead worker for good; like every final state, it counts in its batch."""
    cutoff = utcnow() - timedelta(seconds=dead_after_s)
    row = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "running", Job.heartbeat_at < cutoff)
        .values(status="failed", error_code="worker_lost", error_message=message, finished_at=utcnow())
        .returning(Job.id, Job.batch_id)
    ).first()
    return settlement(session, row, "failed")


def mark_sent(session: Session, job_ids: Sequence[str]) -> None:
    """These jobs' tasks are on the broker now; a batch still ``validating`` (its first send
    failed while the broker was down) is in progress from here on."""
    if not job_ids:
        return
    now = utcnow()
    batch_ids = session.scalars(
        update(Job).where(Job.id.in_(job_ids)).values(enqueued_at=now).returning(Job.batch_id)
    ).all()
    started = {b for b in batch_ids if b is not None}
    if started:
        session.execute(
            update(Batch)
            .where(Batch.id.in_(started), Batch.status == "validating")
            .values(status="in_progress", started_at=now)
        )


def forget_sends(session: Session) -> int:
    """The broker lost its data (restarted empty): every queued job counts as never sent, so
    the next sweep sends it again. Returns how many."""
    rows = session.execute(
        update(Job)
        .where(Job.status == "queued", Job.enqueued_at.is_not(None))
        .values(enqueued_at=None)
        .returning(Job.id)
    ).all()
    return len(rows)


def withdraw_unsent_job(session: Session, job_id: str) -> bool:
    """Delete a job that could not be sent, unless a worker got it after all. True if deleted:
    the request that made it answers 503 and leaves nothing behind."""
    done = session.execute(
        delete(Job).where(Job.id == job_id, Job.status == "queued").returning(Job.id)
    ).first()
    return done is not None
