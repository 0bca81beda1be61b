"""Submitting jobs, waiting for them, and showing them.

Order matters: the job row is committed before the task is sent, so a worker never sees a
task for a job that does not exist yet, and a crash between the two leaves a queued row that
the sweeper finds and sends (the job table is its own outbox; never a task without a row).

A synchronous request cannot be answered while the broker is down, so it answers 503 with
``Retry-After`` and withdraws its row: nothing half-accepted stays behind, and a retry with
the same ``Idempotency-Key`` starts afresh instead of attaching to a job that never ran.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from api.errors import ApiError, ServiceUnavailable
from api.services import routing_service
from api.state import AppState
from ensemble_core.spec import EnsembleConfig, GenerationRequest
from jobqueue.celery_config import BROKER_ERRORS
from jobqueue.contract import MODELS_QUEUE
from jobqueue.webhook_policy import CallbackURLRefused, check_callback_url
from persistence import recovery, repository
from persistence.db import Database
from persistence.models import Job, new_id

log = logging.getLogger(__name__)


def submit_job(
    state: AppState,
    *,
    kind: str,
    generation: GenerationRequest,
    config: EnsembleConfig,
    config_version_id: int,
    idempotency_key: str | None = None,
    webhook_url: str | None = None,
    tenant: str | None = None,
    extra: dict[str, Any] | None = None,
    fingerprint: str | None = None,
    job_id: str | None = None,
    accept_unsent: bool = False,
    reply_to: str | None = None,
) -> tuple[Job, bool]:
    """Store and enqueue a job. Returns (job, created); with a known idempotency key the
    existing job comes back and nothing new is enqueued.

    ``fingerprint`` identifies the client's request: the same key with a different request is
    a client bug and answers 409 instead of silently returning another request's answer.
    ``job_id`` lets a caller subscribe to the job's events before its task is sent.
    ``accept_unsent``: the caller answers 202 and the client polls, so a broker outage need
    not refuse the job: it waits in Postgres and the sweeper sends it once the broker is back.
    ``reply_to``: the waiting API process's reply channel (``jobqueue.reply_inbox``)."""
    if idempotency_key:
        with state.db.transaction() as session:
            existing = repository.find_job_by_idempotency_key(session, idempotency_key, tenant=tenant)
        if existing is not None:
            return _same_request(existing, fingerprint), False
    if webhook_url:
        check_webhook_url(state, webhook_url)
    refuse_when_queue_full(state, tenant=tenant)
    queue = routing_service.route_job(state, config_version_id, (extra or {}).get("models"))
    request_json = {
        "generation": generation.model_dump(mode="json"),
        "ensemble_config": config.model_dump(mode="json"),
        **(extra or {}),
    }
    if queue != MODELS_QUEUE:
        request_json["queue"] = queue  # where the sweeper sends it again, should it need to
    # every job carries the deadline it runs under (api/services/job_cancel.py)
    request_json.setdefault(
        "deadline_s", min(state.settings.job_deadline_s, state.settings.max_job_deadline_s)
    )
    if fingerprint:
        request_json["fingerprint"] = fingerprint
    if reply_to:
        request_json["reply_to"] = reply_to
    row = repository.new_job_row(
        kind=kind,
        request=request_json,
        config_version_id=config_version_id,
        webhook_url=webhook_url,
        idempotency_key=idempotency_key,
        tenant=tenant,
        job_id=job_id,
    )
    try:
        # stored together with the other submissions of this moment, then sent (group_commit)
        outcome = state.submissions.submit(row, queue=queue)
    except IntegrityError:
        # a concurrent retry with the same key won the insert: attach to its job
        with state.db.transaction() as session:
            existing = repository.find_job_by_idempotency_key(session, idempotency_key or "", tenant=tenant)
        if existing is None:
            raise
        return _same_request(existing, fingerprint), False
    if outcome.sent:
        accepted(state, outcome.job.id)
    else:
        unsent(state, outcome.job.id, outcome.publish_error, accept_unsent=accept_unsent)
    return outcome.job, True


def request_fingerprint(kind: str, body: dict[str, Any]) -> str:
    """A stable hash of what the client asked (keys sorted); transport fields left out."""
    canonical = json.dumps({"kind": kind, **body}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _same_request(existing: Job, fingerprint: str | None) -> Job:
    stored = (existing.request or {}).get("fingerprint")
    if fingerprint and stored and stored != fingerprint:
        raise ApiError(
            409,
            "this Idempotency-Key was already used for a different request; use a new key",
            code="idempotency_key_reused",
            extra={"job_id": existing.id},
        )
    return existing


def check_webhook_url(state: AppState, url: str) -> None:
    """Refuse a callback the workers could not sign or must not call (422, before any row)."""
    settings = state.webhooks
    if not settings.webhook_secret:
        raise ApiError(
            422,
            "webhooks are not configured on this server (set ENSEMBLEHUB_WEBHOOK_SECRET=whsec_...)",
            code="webhooks_not_configured",
            param="webhook_url",
        )
    try:
        check_callback_url(url, settings.allowlist)
    except CallbackURLRefused as exc:
        raise ApiError(422, str(exc), code="webhook_url_forbidden", param="webhook_url") from exc


def refuse_when_queue_full(state: AppState, adding: int = 1, *, tenant: str | None = None) -> None:
    """Back-pressure: past ``max_queued_jobs`` waiting jobs, or a tenant's
    ``max_queued_jobs_per_tenant``, new work answers 429: one tenant's flood cannot fill the
    queue every tenant shares."""
    per_tenant = state.settings.max_queued_jobs_per_tenant
    if tenant is not None and per_tenant > 0:
        with state.db.transaction() as session:
            mine = repository.count_jobs(session, status="queued", tenant=tenant)
        if mine + adding > per_tenant:
            raise ApiError(
                429,
                f"tenant {tenant!r} has {mine} jobs waiting (limit {per_tenant} per tenant); retry later",
                code="tenant_queue_full",
                headers={"Retry-After": "30"},
            )
    limit = state.settings.max_queued_jobs
    if limit <= 0:
        return
    queued = _queue_depth(state)
    if queued + adding > limit:
        raise ApiError(
            429,
            f"the queue is full ({queued} jobs waiting, limit {limit}); retry later",
            code="queue_full",
            headers={"Retry-After": "30"},
        )


# Counting queued jobs is a query per submission; back-pressure does not need it exact, so each
# API process counts once a second and adds what it accepted itself since.
QUEUE_DEPTH_TTL_S = 1.0
_depth_cache: weakref.WeakKeyDictionary[Database, list[float]] = weakref.WeakKeyDictionary()
_depth_lock = threading.Lock()


def _queue_depth(state: AppState) -> int:
    now = time.monotonic()
    with _depth_lock:
        cached = _depth_cache.get(state.db)
        if cached is not None and cached[0] > now:
            return int(cached[1])
    with state.db.transaction() as session:
        queued = repository.count_jobs(session, status="queued")
    with _depth_lock:
        _depth_cache[state.db] = [now + QUEUE_DEPTH_TTL_S, float(queued)]
    return queued


def _count_accepted(state: AppState, jobs: int = 1) -> None:
    with _depth_lock:
        cached = _depth_cache.get(state.db)
        if cached is not None:
            cached[1] += jobs


def unsent(state: AppState, job_id: str, error: BaseException | None, *, accept_unsent: bool) -> None:
    """A committed job the broker did not take. Withdraw it and answer 503; should a worker
    have got it after all (the send failed after the message was stored), the job stays and
    the request goes on as accepted. With ``accept_unsent`` the job stays unsent for the
    sweeper instead."""
    log.warning("enqueue of %s failed: %s", job_id, error)
    if accept_unsent:
        return
    with state.db.transaction() as session:
        withdrawn = recovery.withdraw_unsent_job(session, job_id)
    if withdrawn:
        raise ServiceUnavailable(
            "the job queue (broker) is unavailable; nothing was stored, retry shortly",
            code="broker_unavailable",
        ) from error


def accepted(state: AppState, job_id: str) -> None:
    """The broker has the job: count it in the queue depth and mark it sent."""
    _count_accepted(state)
    enqueue_marker(state).mark(job_id)


# A live subscription hears the done event (it is opened before the first read, so none is
# missed); the re-read is only a safety net, and with hundreds of waiters a read per waiter
# per second would cost the API process more CPU than everything else it does.
RECHECK_S = 5.0


async def wait_for_job(
    state: AppState,
    job_id: str,
    timeout_s: float,
    *,
    events: JobEvents | None = None,
    submitted: Job | None = None,
) -> Job:
    """Wait until the job is final or the timeout passes; returns the job as last known.

    Events on the bus wake us at once, and the worker's done event carries the final state it
    committed (``final``): the answer is built from it, with no read. The database is re-read
    when a done event carries no final state (a cancel, a large result), and every few seconds
    in case an event was missed (Postgres is the truth). Without the bus (Redis restarting) the
    database alone is polled, twice a second, so a job that finishes meanwhile is still
    answered. The wait holds no thread: only each database read borrows one from the pool, for
    the moment it takes.

    ``events`` and ``submitted``: a subscription the caller opened before the job's task was
    sent, and the job as its submission stored it (:func:`submit_and_wait`); no event can have
    come before the subscription, so the first read is skipped too. The caller closes them."""
    deadline = time.monotonic() + timeout_s
    own = events is None
    if events is None:
        events = await JobEvents.open(state, job_id)
    try:
        if submitted is not None:
            job = submitted
        else:
            job = await run_in_threadpool(load_job, state, job_id)
        while not repository.is_final(job.status):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            event = await events.get(min(RECHECK_S, remaining))
            if event is not None and event.get("type") != "done":
                continue
            known = final_from_event(job, event) if event is not None else None
            job = known if known is not None else await run_in_threadpool(load_job, state, job_id)
    finally:
        if own:
            await events.close()
    return job


class ClientGone(Exception):
    """The client closed its connection while its request waited for the job."""

    def __init__(self, job: Job) -> None:
        super().__init__(f"the client of job {job.id} left")
        self.job = job


async def submit_and_wait(
    state: AppState,
    submit: Callable[[str, str | None], tuple[Job, bool]],
    timeout_s: float | Callable[[], float],
    *,
    until_gone: Callable[[], Awaitable[None]] | None = None,
) -> Job:
    """Submit a job and wait for it, listening before its task is sent.

    ``submit(job_id, reply_to)`` stores and sends the job under that id, its done event also
    to ``reply_to`` (this process's reply inbox, or None) (or, for a known Idempotency-Key,
    returns the earlier job, which is then waited for as any other). ``timeout_s`` may be a
    function, asked once ``submit`` has run (the request it prepares sets the timeout).
    ``until_gone``: returns when the client has disconnected; the wait for a job this call
    created then stops with :class:`ClientGone` (the caller decides what becomes of the job)."""
    job_id = new_id("job")
    events = await JobEvents.open_reply(state, job_id)
    try:
        job, _created = await run_in_threadpool(submit, job_id, events.reply_to)
        timeout = timeout_s() if callable(timeout_s) else timeout_s
        if job.id == job_id:
            waited = wait_for_job(state, job_id, timeout, events=events, submitted=job)
            if until_gone is not None:
                final = await _unless_gone(waited, until_gone)
                if final is None:
                    raise ClientGone(job)
                job = final
            else:
                job = await waited
            if repository.is_final(job.status):
                # ended before its "sent" mark was written: the mark is moot (the sweeper only
                # looks at queued jobs), so the marker's UPDATE is skipped for it
                enqueue_marker(state).forget(job_id)
            return job
    finally:
        await events.close()
    return await wait_for_job(state, job.id, timeout)


async def _unless_gone(waited: Awaitable[Job], until_gone: Callable[[], Awaitable[None]]) -> Job | None:
    """What ``waited`` returns, or None if ``until_gone`` returns first (the wait is cancelled).

    ``waited`` runs in this task; only the disconnect watch is a task of its own, which cancels
    this one if the client leaves. (A task group of two tasks cost a sync request ~10% of the
    API's CPU: its scopes, two task starts and the cancellation's delivery.)"""
    waiting = asyncio.current_task()
    assert waiting is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        try:
            await until_gone()
        except Exception:  # noqa: BLE001 - a broken receive is not a disconnect; the wait goes on
            return
        gone = True
        waiting.cancel()

    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        return await waited
    except asyncio.CancelledError:
        if not gone:
            raise  # cancelled from outside (the server's shutdown): not ours to swallow
        waiting.uncancel()
        return None
    finally:
        watcher.cancel()


def final_from_event(job: Job, event: dict[str, Any]) -> Job | None:
    """The job in the final state a worker's done event reports, or None when the event does
    not carry it (the API's cancel event, a result too large for an event, an older worker).

    The event comes from the attempt that committed this state (a fenced-off attempt publishes
    no done event), after its commit: it says what a read would find, for the fields an answer
    uses. Built as a new, unattached row so ``job`` (maybe the caller's) is left as it is."""
    final = event.get("final")
    status = event.get("status")
    if not isinstance(final, dict) or status not in ("succeeded", "failed") or "attempt" not in event:
        return None
    return Job(
        id=job.id,
        kind=job.kind,
        tenant=job.tenant,
        request=job.request,
        config_version_id=job.config_version_id,
        batch_id=job.batch_id,
        batch_index=job.batch_index,
        webhook_url=job.webhook_url,
        idempotency_key=job.idempotency_key,
        created_at=job.created_at,
        attempts=int(event["attempt"]),
        status=status,
        result=final.get("result"),
        usage=final.get("usage"),
        error_code=final.get("error_code"),
        error_message=final.get("error_message"),
    )


class JobEvents:
    """A job's event subscription that outlives the broker: once Redis fails, ``get`` waits
    a moment and answers None, so the caller re-reads the job from Postgres (the truth)."""

    def __init__(self, job_id: str, subscription: Any | None) -> None:
        self.job_id, self._sub = job_id, subscription
        self.reply_to: str | None = getattr(subscription, "reply_to", None)

    @classmethod
    async def open_reply(cls, state: AppState, job_id: str) -> JobEvents:
        """The job's done event through this process's reply inbox (no round trip; the job
        must carry ``reply_to``), or, where there is none (embedded mode, Redis reconnecting),
        a subscription of its own."""
        open_reply = getattr(state.bus, "open_reply", None)
        if open_reply is not None:
            try:
                inbox = await open_reply(job_id)
            except BROKER_ERRORS as exc:
                log.warning("no reply inbox (%s); subscribing to the job's own events", exc)
                inbox = None
            if inbox is not None:
                return cls(job_id, inbox)
        return await cls.open(state, job_id)

    @classmethod
    async def open(cls, state: AppState, job_id: str) -> JobEvents:
        try:
            return cls(job_id, await state.bus.subscribe_async(job_id))
        except BROKER_ERRORS as exc:
            log.warning("cannot subscribe to job events (%s); polling the database", exc)
            return cls(job_id, None)

    async def get(self, timeout: float) -> dict[str, Any] | None:
        if self._sub is not None:
            try:
                return await self._sub.get(timeout)  # type: ignore[no-any-return]
            except BROKER_ERRORS as exc:
                log.warning("job events of %s lost (%s); polling the database", self.job_id, exc)
                await self.close()
        await anyio.sleep(min(0.5, max(0.0, timeout)))
        return None

    async def close(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            await sub.close()


def publish_event(state: AppState, job_id: str, event: dict[str, Any]) -> None:
    """Wake the job's waiters. Events are a fast path only (waiters re-read Postgres), so a
    broker outage must not fail the request that changed the job."""
    try:
        state.bus.publish(job_id, event)
    except BROKER_ERRORS as exc:
        log.warning("could not publish %s of job %s: %s", event.get("type"), job_id, exc)


def publish_cancels(state: AppState, job_ids: list[str]) -> None:
    """Tell the workers these jobs are cancelled (one message on the cancels channel, which
    every worker process hears). A fast path too: a lost one is found by the job heartbeat."""
    try:
        state.bus.publish_cancels(job_ids)
    except BROKER_ERRORS as exc:
        log.warning("could not publish the cancel of jobs %s: %s", job_ids, exc)


def load_job(state: AppState, job_id: str, *, tenant: str | None = None) -> Job:
    with state.db.transaction() as session:
        job = repository.get_job(session, job_id, tenant=tenant)
    if job is None:
        raise ApiError(404, f"no job with id {job_id!r}", code="job_not_found", param="job_id")
    return job


def resolve_timeout(state: AppState, requested: float | None) -> float:
    if requested is None:
        return state.settings.sync_timeout_s
    if requested <= 0:
        raise ApiError(400, "timeout must be positive (seconds)", code="invalid_timeout", param="timeout")
    return min(requested, state.settings.max_sync_timeout_s)


# HTTP status of a failed job by its stable error code (anything else is a server error)
_FAILED_JOB_STATUS = {
    "invalid_config": 400,
    "invalid_request": 400,
    "model_not_found": 404,
    "broker_unavailable": 503,
    "worker_lost": 503,
    "database_unavailable": 503,
    # the job ran past its deadline_s (api/services/job_cancel.py); its partial answer is kept
    "deadline_exceeded": 504,
}


def final_job_status(job: Job) -> int:
    """The HTTP status that answers for a job that ended without succeeding."""
    return 409 if job.status == "cancelled" else _FAILED_JOB_STATUS.get(job.error_code or "", 500)


def raise_unless_succeeded(job: Job) -> None:
    """Translate a job that is not done (504) or failed (4xx/5xx) into the OpenAI envelope."""
    if job.status == "succeeded":
        return
    if not repository.is_final(job.status):
        raise ApiError(
            504,
            f"the job did not finish within the timeout; it goes on: poll /v1/jobs/{job.id}",
            code="timeout",
            # OpenAI's SDK retries a 5xx after Retry-After; with the same Idempotency-Key the
            # retry waits for this job again
            headers={"Location": f"/v1/jobs/{job.id}", "Retry-After": "2", "X-Should-Retry": "true"},
            extra={"job_id": job.id},
        )
    headers = {"Location": f"/v1/jobs/{job.id}"}
    if job.error_code == "deadline_exceeded":
        headers["X-Should-Retry"] = "false"  # OpenAI's SDKs would retry a 504: it would run out again
    raise ApiError(
        final_job_status(job),
        job.error_message or f"job {job.status}",
        code=job.error_code or job.status,
        extra={"job_id": job.id},
        headers=headers,
    )


def job_view(job: Job) -> dict[str, Any]:
    """The poll answer of /v1/jobs/{id}."""
    timings: dict[str, Any] = {}
    if job.started_at and job.created_at:
        timings["queue_wait_ms"] = round((job.started_at - job.created_at).total_seconds() * 1000, 1)
    if job.finished_at and job.started_at:
        timings["run_ms"] = round((job.finished_at - job.started_at).total_seconds() * 1000, 1)
    if job.finished_at and job.created_at:
        timings["total_ms"] = round((job.finished_at - job.created_at).total_seconds() * 1000, 1)
    if job.result and isinstance(job.result.get("timings"), dict):
        timings.update(job.result["timings"])
    return {
        "id": job.id,
        "object": "job",
        "kind": job.kind,
        "status": job.status,
        "created_at": _ts(job.created_at),
        "started_at": _ts(job.started_at),
        "finished_at": _ts(job.finished_at),
        "attempts": job.attempts,
        "config_version_id": job.config_version_id,
        "batch_id": job.batch_id,
        "request": job.request,
        "result": job.result,
        "usage": job.usage,
        "error": {"code": job.error_code, "message": job.error_message} if job.status == "failed" else None,
        "timings": timings,
    }


def _ts(value: Any) -> int | None:
    return int(value.timestamp()) if value is not None else None


class EnqueueMarker:
    """Records ``enqueued_at`` for sent jobs in one UPDATE every few milliseconds instead of
    one transaction per submission. The mark only tells the sweeper "sent"; a job whose mark is
    lost (crash before the flush) is sent again after the sweeper's grace, and the duplicate
    message is harmless (the claim is conditional)."""

    def __init__(self, db: Database, interval_s: float = 0.05) -> None:
        self._db, self._interval = db, interval_s
        self._pending: dict[str, None] = {}  # job ids in the order sent
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="enqueue-marker", daemon=True)
        self._thread.start()

    def mark(self, job_id: str) -> None:
        with self._lock:
            self._pending[job_id] = None
        self._wake.set()

    def forget(self, job_id: str) -> None:
        """Leave out the mark of a job that is already final (if not written yet)."""
        with self._lock:
            self._pending.pop(job_id, None)

    def flush(self) -> None:
        with self._lock:
            ids, self._pending = list(self._pending), {}
        if not ids:
            return
        try:
            # one UPDATE, its own transaction (no BEGIN/COMMIT round trips, no ORM session)
            with self._db.statement() as connection:
                repository.mark_enqueued(connection, ids)
        except Exception as exc:  # noqa: BLE001 - unmarked jobs are re-sent by the sweeper
            log.warning("could not mark %d jobs as sent: %s", len(ids), exc)

    def _run(self) -> None:
        while True:
            self._wake.wait()
            time.sleep(self._interval)  # gather the submissions of a burst into one UPDATE
            self._wake.clear()
            self.flush()


_markers: weakref.WeakKeyDictionary[Database, EnqueueMarker] = weakref.WeakKeyDictionary()


def enqueue_marker(state: AppState) -> EnqueueMarker:
    with _depth_lock:
        marker = _markers.get(state.db)
        if marker is None:
            marker = _markers[state.db] = EnqueueMarker(state.db)
        return marker
