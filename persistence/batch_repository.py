"""Repository functions for batches: bulk creation, counters, items in input order, cancel.

Counters are moved with one conditional ``UPDATE ... SET n = n + k`` per change, never read,
modified and written back: several workers finish items of one batch at the same moment, and
the row lock of the UPDATE orders them. The update that accounts for the last open item is
also the one that moves the batch to its final state, so exactly one caller learns it did.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import case, insert, select, update
from sqlalchemy.orm import Session

from persistence import metrics_repository
from persistence.models import Batch, Job, utcnow
from persistence.paging import after_anchor

OPEN_BATCH_STATUSES = ("validating", "in_progress", "finalizing")
FINAL_BATCH_STATUSES = ("completed", "failed", "cancelled")


def create_batch(
    session: Session,
    *,
    batch_id: str,
    total: int,
    webhook_url: str | None = None,
    metadata: dict[str, Any] | None = None,
    tenant: str | None = None,
) -> Batch:
    batch = Batch(
        id=batch_id,
        status="validating",
        total=total,
        webhook_url=webhook_url,
        metadata_=metadata,
        tenant=tenant,
    )
    session.add(batch)
    session.flush()
    return batch


def insert_batch_jobs(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """One multi-row INSERT per thousand items (SQLAlchemy's insertmanyvalues): a 10,000-item
    batch is stored in well under a second. Each row needs id, kind, request, batch_id,
    batch_index and config_version_id; the rest takes the column defaults."""
    if rows:
        now = utcnow()
        session.execute(
            insert(Job),
            [{"status": "queued", "attempts": 0, "tenant_key": "", "created_at": now, **r} for r in rows],
        )


def get_batch(session: Session, batch_id: str, *, tenant: str | None = None) -> Batch | None:
    batch = session.get(Batch, batch_id)
    if batch is None or (tenant is not None and batch.tenant != tenant):
        return None
    return batch


def list_batches(
    session: Session, *, limit: int = 20, after: str | None = None, tenant: str | None = None
) -> Sequence[Batch]:
    query = select(Batch).order_by(Batch.created_at.desc(), Batch.id.desc()).limit(limit)
    if tenant is not None:
        query = query.where(Batch.tenant == tenant)
    query = after_anchor(session, query, Batch, after)
    return session.scalars(query).all()


def mark_batch_enqueued(session: Session, batch_id: str, job_ids: Sequence[str]) -> None:
    """These items are on the queue; the batch is in progress (unless a worker already finished it)."""
    now = utcnow()
    session.execute(update(Job).where(Job.id.in_(job_ids)).values(enqueued_at=now))
    session.execute(
        update(Batch)
        .where(Batch.id == batch_id, Batch.status == "validating")
        .values(status="in_progress", started_at=now)
    )


def fail_batch(session: Session, batch_id: str, *, code: str, message: str) -> None:
    """The batch could not be queued: fail it and every item still queued."""
    now = utcnow()
    failed = session.execute(
        update(Job)
        .where(Job.batch_id == batch_id, Job.status == "queued")
        .values(status="failed", error_code=code, error_message=message[:4000], finished_at=now)
        .returning(Job.id)
    ).all()
    session.execute(
        update(Batch)
        .where(Batch.id == batch_id)
        .values(
            status="failed",
            failed=Batch.failed + len(failed),
            finished_at=now,
        )
    )
    metrics_repository.record_final_jobs(session, "failed", len(failed))


def count_batch_items(
    session: Session, batch_id: str, *, completed: int = 0, failed: int = 0, cancelled: int = 0
) -> str | None:
    """Add finished items to the batch counters. Returns the batch's final status when this
    call accounted for its last open item, else None."""
    added = completed + failed + cancelled
    if added <= 0:
        return None
    # in an UPDATE's SET clause the columns are the values before the update
    finishing = Batch.completed + Batch.failed + Batch.cancelled + added >= Batch.total
    new_status = case(
        (finishing & (Batch.status == "cancelling"), "cancelled"),
        (finishing & Batch.status.in_(OPEN_BATCH_STATUSES), "completed"),
        else_=Batch.status,
    )
    row = session.execute(
        update(Batch)
        .where(Batch.id == batch_id)
        .values(
            completed=Batch.completed + completed,
            failed=Batch.failed + failed,
            cancelled=Batch.cancelled + cancelled,
            status=new_status,
            finished_at=case((finishing, utcnow()), else_=Batch.finished_at),
        )
        .returning(Batch.status, Batch.total, Batch.completed, Batch.failed, Batch.cancelled)
    ).first()
    if row is None:
        return None
    status, total, done_ok, done_failed, done_cancelled = row
    done = done_ok + done_failed + done_cancelled
    # only one update can move the sum onto the total: each item is counted exactly once
    if done >= total and done - added < total:
        return str(status)
    return None


def cancel_batch(session: Session, batch_id: str) -> tuple[str | None, int, list[str]]:
    """Cancel the open items of an open batch: queued ones never run, running ones are
    cancelled now and their workers (told by the caller) stop within a step and keep their
    partial answers; finished items are kept.

    Returns (final status if the batch ended now, number of items cancelled, ids of the items
    that were running).

    The open items' rows are locked first, the batch row after them: the order a worker
    settling an item takes (its job row, then its batch's counters). Locking the batch first
    made the two wait on each other whenever the cancel paused on an item row (a worker's
    heartbeat holding it a moment), and Postgres aborted the cancel as a deadlock."""
    session.execute(
        select(Job.id)
        .where(Job.batch_id == batch_id, Job.status.in_(("queued", "running")))
        .order_by(Job.id)
        .with_for_update(key_share=True)
    ).all()
    session.execute(
        update(Batch)
        .where(Batch.id == batch_id, Batch.status.in_(OPEN_BATCH_STATUSES))
        .values(status="cancelling", cancelling_at=utcnow())
    )
    running = list(session.scalars(select(Job.id).where(Job.batch_id == batch_id, Job.status == "running")))
    cancelled = session.execute(
        update(Job)
        .where(Job.batch_id == batch_id, Job.status.in_(("queued", "running")))
        .values(
            status="cancelled",
            finished_at=utcnow(),
            error_code="cancelled",
            error_message="cancelled with its batch",
        )
        .returning(Job.id)
    ).all()
    final = count_batch_items(session, batch_id, cancelled=len(cancelled))
    metrics_repository.record_final_jobs(session, "cancelled", len(cancelled))
    return final, len(cancelled), running


def batch_items(session: Session, batch_id: str, *, after: int = -1, limit: int = 100) -> Sequence[Job]:
    """Items in input order, starting after the given input index."""
    return session.scalars(
        select(Job)
        .where(Job.batch_id == batch_id, Job.batch_index > after)
        .order_by(Job.batch_index)
        .limit(limit)
    ).all()


def iter_batch_items(session: Session, batch_id: str, *, chunk: int = 500) -> Iterator[Job]:
    """Every item in input order, read a chunk at a time (for JSONL downloads)."""
    after = -1
    while True:
        rows = batch_items(session, batch_id, after=after, limit=chunk)
        yield from rows
        if len(rows) < chunk:
            return
        after = rows[-1].batch_index if rows[-1].batch_index is not None else after + chunk
        session.expunge_all()
