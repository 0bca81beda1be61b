"""The one Celery configuration shared by producer (API) and consumer (worker)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import kombu.exceptions
from celery import Celery
from kombu import Queue
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from jobqueue import redis_publisher
from jobqueue.contract import (
    ALL_QUEUES,
    DELIVER_WEBHOOK_TASK,
    MAINTENANCE_QUEUE,
    MODELS_QUEUE,
    RUN_JOB_TASK,
    SWEEP_TASK,
    WEBHOOKS_QUEUE,
)
from jobqueue.settings import QueueSettings

log = logging.getLogger(__name__)

# what a publish raises when the broker is unreachable, or when a pipeline of publishes failed
# and left each message's delivery uncertain (kombu >= 5.7's BatchPublishError)
BROKER_ERRORS: tuple[type[BaseException], ...] = (
    kombu.exceptions.OperationalError,
    RedisError,
    OSError,
    *((kombu.exceptions.BatchPublishError,) if hasattr(kombu.exceptions, "BatchPublishError") else ()),
)


def make_celery(settings: QueueSettings, *, name: str = "ensemblehub") -> Celery:
    app = Celery(name, broker=settings.broker_url)
    if settings.broker_url.startswith(("redis://", "rediss://")):
        # the same Redis transport with one repair for thread-pool workers (see the module)
        app.conf.broker_transport = "jobqueue.redis_transport:Transport"
    # a task whose worker dies stays invisible on Redis for visibility_timeout, so it must
    # exceed the hard time limit, or a long job would be handed to a second worker
    visibility_timeout = settings.task_hard_time_limit_s + 600
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,  # results live in Postgres, not in the broker
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=settings.task_hard_time_limit_s,
        task_soft_time_limit=settings.task_soft_time_limit_s,
        broker_transport_options={"visibility_timeout": visibility_timeout},
        # workers and beat outlive a broker restart: they reconnect by themselves, forever
        # (the API, which must answer fast, lowers this for its producer)
        broker_connection_retry=True,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_connection_timeout=3,
        # a task running when the broker connection drops goes on: its result goes to Postgres
        worker_cancel_long_running_tasks_on_connection_loss=False,
        # no "task-sent" event: it is a second broker publish per submission (measured: half of
        # send_task's cost); Flower still sees every task from the worker's received/started events
        task_send_sent_event=False,
        # task events (received, started, succeeded: three broker publishes per job from the
        # worker's event loop, competing with the job for the GIL) only while someone watches:
        # Flower enables them on every worker at its start and every 5 s after
        # (``ensemblehub flower``, Flower's ``enable_events``)
        worker_send_task_events=False,
        task_track_started=True,
        task_default_queue=MODELS_QUEUE,
        task_queues=[Queue(q) for q in ALL_QUEUES],
        task_routes={
            RUN_JOB_TASK: {"queue": MODELS_QUEUE},
            DELIVER_WEBHOOK_TASK: {"queue": WEBHOOKS_QUEUE},
            SWEEP_TASK: {"queue": MAINTENANCE_QUEUE},
        },
        worker_hijack_root_logger=False,
        enable_utc=True,
    )
    return app


def enqueue_job(app: Celery, job_id: str, *, queue: str = MODELS_QUEUE) -> None:
    """Send the run_job task by name, so the API never imports the worker code.

    The Celery task id is the job id: Flower's task page ``/task/<job id>`` shows the job.
    ``queue``: the job's queue (``jobqueue.routing.queue_for``)."""
    app.send_task(RUN_JOB_TASK, args=[job_id], queue=queue, task_id=job_id)


def enqueue_jobs(app: Celery, job_ids: list[str], *, queues: Mapping[str, str] | None = None) -> None:
    """Send the run_job tasks of a group of jobs in one Redis pipeline (a 10,000-item batch, or
    a group of submissions, must be quick).

    ``queues`` maps a job id to its queue; a job not in it goes to the default ``models``
    queue. On Redis the messages are made from a template of Celery's own message
    (``jobqueue.redis_publisher``: the same bytes, a fraction of the CPU); elsewhere, or when no
    template can be made, they go through Celery and kombu. No ``task-sent`` event per message:
    that event is a second publish and doubles the cost, and Flower still sees each task when a
    worker receives it. Should the pipeline fail, each message of it may or may not be on the
    broker: callers treat them all as unsent (the sweeper sends them again; a duplicate is
    harmless). Raises one of :data:`BROKER_ERRORS` when the broker is unreachable.

    A template's pipeline that loses its connection sends the group again through kombu,
    whose publish retry policy rides out a short outage as it always did (a longer one is
    refused after those retries, as before); a message the failed pipeline had delivered may
    then be on its queue twice, harmless: a job is claimed once."""
    publisher = redis_publisher.publisher_for(app)
    if publisher is not None:
        try:
            if publisher.publish(job_ids, queues):
                return
        except (RedisConnectionError, RedisTimeoutError) as exc:
            log.info("sending %d jobs by template failed (%s); sending them through kombu", len(job_ids), exc)
    enqueue_jobs_through_kombu(app, job_ids, queues=queues)


def enqueue_jobs_through_kombu(
    app: Celery, job_ids: list[str], *, queues: Mapping[str, str] | None = None
) -> None:
    """:func:`enqueue_jobs` through Celery and kombu: over one producer connection, in one Redis
    pipeline per thousand messages (kombu >= 5.7; older ones send each at once)."""
    with app.producer_or_acquire() as producer, _publish_batch(producer):
        for job_id in job_ids:
            queue = queues.get(job_id, MODELS_QUEUE) if queues else MODELS_QUEUE
            redis_publisher.send_through_kombu(app, producer, job_id, queue)


def _publish_batch(producer: Any) -> AbstractContextManager[Any]:
    # kombu >= 5.7 buffers a batch's publishes in one Redis pipeline; older ones send each at once
    batch = getattr(producer, "batch", None)
    return batch(max_size=1000) if batch is not None else nullcontext()


def enqueue_webhook(app: Celery, delivery_id: int, *, countdown: float | None = None) -> None:
    app.send_task(
        DELIVER_WEBHOOK_TASK,
        args=[delivery_id],
        queue=WEBHOOKS_QUEUE,
        task_id=f"webhook-delivery-{delivery_id}",
        countdown=countdown,
    )


def enqueue_webhooks(app: Celery, delivery_ids: list[int]) -> None:
    for delivery_id in delivery_ids:
        enqueue_webhook(app, delivery_id)
