"""Embedded mode: API and one Celery worker in one process, SQLite, in-memory broker.

The composition root is the only place allowed to wire ``api`` and ``workers`` together.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from ensemble_core.spec import EnsembleSpec

EMBEDDED_BROKER = "memory://"


class EmbeddedWorker:
    def __init__(self, controller: Any, thread: threading.Thread) -> None:
        self.controller, self.thread = controller, thread
        self._stop = threading.Event()
        # Celery beat would run in a child process, which cannot see this process's in-memory
        # broker, so the sweeper runs here on a timer instead
        self._sweeper = threading.Thread(target=self._sweep_loop, name="embedded-sweeper", daemon=True)
        self._sweeper.start()

    def _sweep_loop(self) -> None:
        from workers.runtime import get_runtime
        from workers.sweeper import sweep

        while not self._stop.wait(get_runtime().settings.sweep_interval_s):
            try:
                runtime = get_runtime()
                sweep(runtime.db, self.controller.app, runtime.settings)
            except Exception:  # noqa: BLE001 - the next sweep tries again
                pass

    def stop(self) -> None:
        self._stop.set()
        try:
            self.controller.stop(in_sighandler=False)
        finally:
            self.thread.join(timeout=10)


def build_embedded(
    sqlite_path: Path, *, startup_spec: EnsembleSpec | None = None
) -> tuple[FastAPI, EmbeddedWorker]:
    """Migrate the SQLite file, start the worker thread, return the app and the worker."""
    db_url = f"sqlite:///{sqlite_path}"
    # the worker runtime builds its settings from the environment: point both sides at the
    # same database and broker before anything reads them
    os.environ["ENSEMBLEHUB_DATABASE_URL"] = db_url
    os.environ["ENSEMBLEHUB_BROKER_URL"] = EMBEDDED_BROKER

    from api.app import create_app
    from api.settings import ApiSettings
    from ensemblehub.services import migrate
    from jobqueue.settings import QueueSettings
    from persistence.settings import DatabaseSettings

    migrate(db_url)
    queue_settings = QueueSettings(broker_url=EMBEDDED_BROKER)
    app = create_app(
        ApiSettings(embedded=True),
        queue_settings=queue_settings,
        database_settings=DatabaseSettings(database_url=db_url, pool_size=5),
        startup_spec=startup_spec,
    )
    # kombu's memory transport keeps its queues per process, so the API's producer and this
    # worker meet there without sharing an app object
    worker = start_worker_thread(queue_settings)
    return app, worker


def start_worker_thread(queue_settings: Any) -> EmbeddedWorker:
    from celery.worker import WorkController

    from workers.app import create_worker_app

    celery_app = create_worker_app(queue_settings)
    celery_app.conf.broker_connection_max_retries = 1
    controller = WorkController(
        app=celery_app,
        pool="solo",
        concurrency=1,
        hostname=f"ensemblehub-embedded@{os.getpid()}",
        queues=["models", "webhooks", "maintenance"],
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
        loglevel="INFO",
    )
    thread = threading.Thread(target=controller.start, name="embedded-worker", daemon=True)
    thread.start()
    return EmbeddedWorker(controller, thread)
