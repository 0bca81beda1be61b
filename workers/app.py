"""The Celery app of the workers: ``celery -A workers.app worker`` (or ``ensemblehub worker``)."""

from __future__ import annotations

import logging

from celery import Celery
from celery.signals import worker_ready, worker_shutdown

from jobqueue.celery_config import enqueue_job, enqueue_webhook, enqueue_webhooks, make_celery
from jobqueue.contract import DELIVER_WEBHOOK_TASK, MAINTENANCE_QUEUE, RUN_JOB_TASK, SWEEP_TASK
from jobqueue.settings import QueueSettings
from jobqueue.webhook_policy import WebhookSettings
from workers import job_runner, sweeper, webhook_delivery
from workers.runtime import get_runtime
from workers.settings import WorkerSettings
from workers.sweep_schedule import SweepSchedule

log = logging.getLogger(__name__)


def create_worker_app(settings: QueueSettings | None = None) -> Celery:
    app = make_celery(settings or QueueSettings(), name="ensemblehub-worker")

    @app.task(name=RUN_JOB_TASK, bind=True, acks_late=True)
    def run_job(self, job_id: str) -> str:  # type: ignore[no-untyped-def]
        """Run ensemble job ``job_id`` (the id is the only argument, so Flower finds it)."""
        runtime = get_runtime()
        try:
            return job_runner.run_job(
                runtime,
                job_id,
                send_webhooks=lambda ids: enqueue_webhooks(app, ids),
                reroute=lambda queue: enqueue_job(app, job_id, queue=queue),
            )
        except job_runner.DatabaseUnavailable as exc:
            # Postgres is still down after the runner's own retries: try the job again later
            # (the claim is conditional, so a retry of a job that did start is skipped)
            raise self.retry(exc=exc, countdown=10, max_retries=None) from exc
        finally:
            runtime.freeze_heap()  # after the job has answered: a no-op unless it loaded a model

    @app.task(name=DELIVER_WEBHOOK_TASK, acks_late=True, ignore_result=True)
    def deliver_webhook(delivery_id: int) -> str:
        """Deliver webhook attempt ``delivery_id`` (a row of webhook_deliveries); on failure the
        next attempt is scheduled as a new task with a countdown."""
        settings = WebhookSettings()
        return webhook_delivery.deliver(
            get_runtime().db,
            delivery_id,
            settings,
            lambda next_id, delay: enqueue_webhook(app, next_id, countdown=delay),
        )

    @app.task(name=SWEEP_TASK, acks_late=False, ignore_result=True)
    def sweep_jobs() -> dict[str, list[str]]:
        """Send queued jobs the broker lost; re-queue or fail jobs whose worker died."""
        runtime = get_runtime()
        return sweeper.sweep(runtime.db, app, runtime.settings).as_dict()

    worker_settings = WorkerSettings()
    app.conf.beat_schedule = {
        "sweep-jobs": {
            "task": SWEEP_TASK,
            "schedule": worker_settings.sweep_interval_s,
            "options": {"queue": MAINTENANCE_QUEUE, "expires": worker_settings.sweep_interval_s * 2},
        }
    }
    return app


_schedule: list[SweepSchedule] = []


@worker_ready.connect
def _announce(**_kwargs: object) -> None:
    # heartbeat only (no model loads): /status can list this worker before its first job,
    # with the queues it reads (the API routes jobs by member set to them: jobqueue.routing)
    runtime = get_runtime()
    runtime.queues = sorted(app.amqp.queues.consume_from or ())
    runtime.freeze_heap()  # the imports (see WorkerRuntime.freeze_heap)
    try:
        runtime.beat_once()
    except Exception as exc:  # noqa: BLE001 - the heartbeat thread writes it again shortly
        log.warning("worker heartbeat failed: %s", exc)
    if not runtime.settings.sweep_in_workers:
        return
    # the sweeper's schedule runs here, one leader across the workers (no beat needed)
    schedule = SweepSchedule.for_broker(
        str(app.conf.broker_url or ""),
        runtime.settings.sweep_interval_s,
        lambda: sweeper.sweep(runtime.db, app, runtime.settings),
    )
    if schedule is not None:
        schedule.start()
        _schedule.append(schedule)


@worker_shutdown.connect
def _goodbye(**_kwargs: object) -> None:
    for schedule in _schedule:
        schedule.stop()
    get_runtime().stop()


app = create_worker_app()
