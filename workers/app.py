"""The Celery app of the workers: ``celery -A workers.app worker`` (or ``ensemblehub worker``)."""

from __future__ import annotations

import logging

from celery import Celery
from celery.signals import worker_ready, worker_shutdown

from jobqueue.celery_config import make_celery
from jobqueue.contract import RUN_JOB_TASK
from jobqueue.settings import QueueSettings
from workers import job_runner
from workers.runtime import get_runtime

log = logging.getLogger(__name__)


def create_worker_app(settings: QueueSettings | None = None) -> Celery:
    app = make_celery(settings or QueueSettings(), name="ensemblehub-worker")

    @app.task(name=RUN_JOB_TASK, bind=True, acks_late=True)
    def run_job(self, job_id: str) -> str:  # type: ignore[no-untyped-def]
        """Run ensemble job ``job_id`` (the id is the only argument, so Flower finds it)."""
        return job_runner.run_job(get_runtime(), job_id)

    return app


@worker_ready.connect
def _announce(**_kwargs: object) -> None:
    # heartbeat only (no model loads): /status can list this worker before its first job
    get_runtime()


@worker_shutdown.connect
def _goodbye(**_kwargs: object) -> None:
    get_runtime().stop()


app = create_worker_app()
