"""Cancelling jobs (queued or running) and the wall-clock deadline every job runs under.

Cancel: the row becomes ``cancelled`` at once (its final state, counted in its batch and its
webhook event recorded in the same transaction), then the API publishes ``cancel_event()`` on
the job's channel (its waiters end) and the job id on the cancels channel. The worker running
the job hears it there (``workers.job_watch``) and its engine stops within one decode
step (one segment on engines that decode remotely); the worker then stores the partial text
and usage in the cancelled row. The cancel call waits up to ``ENSEMBLEHUB_CANCEL_WAIT_S`` for
that, so its answer usually carries the partial result already.

Deadline: ``deadline_s`` in a request body (seconds of running, counted from the start of the
attempt), ``ENSEMBLEHUB_JOB_DEADLINE_S`` when it is absent, capped by
``ENSEMBLEHUB_MAX_JOB_DEADLINE_S`` (400 naming the param past it). It is stored in the job's
request; the worker stops the engine when it passes, and the job fails with
``error.code = "deadline_exceeded"``, its partial result kept.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import anyio
from starlette.concurrency import run_in_threadpool

from api.errors import ApiError
from api.services import job_service, webhook_service
from api.settings import ApiSettings
from api.state import AppState
from jobqueue.events import cancel_event
from jobqueue.webhook_events import record_settlement_events
from persistence import repository
from persistence.models import Job

log = logging.getLogger(__name__)


def resolve_deadline(settings: ApiSettings, requested: float | None, *, param: str = "deadline_s") -> float:
    """The deadline a job runs under: the request's, or the server's default; capped."""
    if requested is None:
        return min(settings.job_deadline_s, settings.max_job_deadline_s)
    if not requested > 0:
        raise ApiError(400, f"{param} must be positive (seconds)", code="invalid_value", param=param)
    if requested > settings.max_job_deadline_s:
        raise ApiError(
            400,
            f"{param}={requested:g} is more than this server allows ({settings.max_job_deadline_s:g} s, "
            "ENSEMBLEHUB_MAX_JOB_DEADLINE_S)",
            code="deadline_too_large",
            param=param,
        )
    return float(requested)


def cancel_job(state: AppState, job_id: str, *, tenant: str | None, wait: bool = True) -> Job:
    """Cancel a queued or running job (idempotent: a cancelled one comes back as it is).
    A finished job stays as it is: 409 ``job_not_cancellable``."""
    job = job_service.load_job(state, job_id, tenant=tenant)
    if job.status == "cancelled":
        return job
    with state.db.transaction() as session:
        settled = repository.cancel_job(session, job_id)
        deliveries = record_settlement_events(session, [settled]) if settled else []
    if settled is None:
        current = job_service.load_job(state, job_id)
        if current.status == "cancelled":  # a concurrent cancel won
            return current
        raise ApiError(
            409,
            f"job {job_id} is {current.status}; a finished job cannot be cancelled",
            code="job_not_cancellable",
            param="job_id",
        )
    webhook_service.send(state, deliveries)
    tell_workers(state, [job_id])
    job = job_service.load_job(state, job_id)
    if wait and job.started_at is not None:
        job = _wait_for_partial_result(state, job)
    return job


def cancel_if_open(state: AppState, job_id: str) -> bool:
    """Cancel the job unless it has ended (a client that dropped its stream); True if it was."""
    with state.db.transaction() as session:
        settled = repository.cancel_job(session, job_id)
        deliveries = record_settlement_events(session, [settled]) if settled else []
    if settled is None:
        return False
    webhook_service.send(state, deliveries)
    tell_workers(state, [job_id])
    return True


async def cancel_after_client_left(state: AppState, job_id: str, how: str) -> None:
    """The client went away before its answer (``background`` was not asked for, so nobody
    will read it): cancel the job, so its worker stops within a decode step. Shielded: the
    disconnect may have cancelled the calling task already."""
    with anyio.CancelScope(shield=True):
        try:
            if await run_in_threadpool(cancel_if_open, state, job_id):
                log.info("job %s cancelled: its client %s", job_id, how)
        except Exception as exc:  # noqa: BLE001 - the job then runs to its end, as before
            log.warning("could not cancel job %s after its client left: %s", job_id, exc)


def tell_workers(state: AppState, job_ids: Iterable[str]) -> None:
    """Tell whichever worker runs these (now cancelled) jobs to stop (one message on the
    cancels channel for all of them); also ends their waiters (each job's own channel). A lost
    event costs only time: the worker's job heartbeat finds the row cancelled."""
    ids = list(job_ids)
    if not ids:
        return
    for job_id in ids:
        job_service.publish_event(state, job_id, cancel_event())
    job_service.publish_cancels(state, ids)


def _wait_for_partial_result(state: AppState, job: Job) -> Job:
    """A running job's worker stores its partial answer within a decode step: wait for it a
    little, so the cancel's answer shows it (a dead worker's job answers without one)."""
    deadline = time.monotonic() + state.settings.cancel_wait_s
    while job.result is None and time.monotonic() < deadline:
        time.sleep(0.05)
        job = job_service.load_job(state, job.id)
    return job
