"""The FastAPI application factory."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from api.errors import ERROR_RESPONSES, install_error_handlers
from api.guards import BodySizeLimit, open_mode_notice, require_api_key
from api.rate_limit import rate_limiter_for
from api.request_id import RequestId
from api.routes import batches, completions, ensemble, files, info, jobs, metrics, openai_batches
from api.services import config_service
from api.settings import ApiSettings
from api.state import AppState
from ensemble_core.spec import EnsembleSpec
from jobqueue.celery_config import make_celery
from jobqueue.events import event_bus_for
from jobqueue.settings import QueueSettings
from persistence.db import Database
from persistence.settings import DatabaseSettings

log = logging.getLogger("api")


_heap_frozen = False


def _freeze_heap_once() -> None:
    """What start-up built lives as long as the process: out of the collector's sight, so that
    a full collection walks only what requests create (see workers.runtime). Once a process: a
    server builds one app; a test process that builds many freezes only the first."""
    global _heap_frozen
    if not _heap_frozen:
        _heap_frozen = True
        gc.collect()
        gc.freeze()


def create_app(
    settings: ApiSettings | None = None,
    *,
    queue_settings: QueueSettings | None = None,
    database_settings: DatabaseSettings | None = None,
    startup_spec: EnsembleSpec | None = None,
) -> FastAPI:
    settings = settings or ApiSettings()
    queue_settings = queue_settings or QueueSettings()
    database_settings = database_settings or DatabaseSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state: AppState = app.state.hub
        try:
            row = config_service.ensure_startup_version(state.db, state.startup_spec)
            log.info("serving ensemble config version %s", row.version)
        except Exception as exc:  # noqa: BLE001 - start anyway; /status says what is down
            log.warning("could not set the start-up config version (database down?): %s", exc)
        try:
            notice = open_mode_notice(state, state.settings.host)
            if notice:
                log.warning(notice)
        except Exception as exc:  # noqa: BLE001 - requests check for keys themselves
            log.warning("could not check for API keys (database down?): %s", exc)
        _freeze_heap_once()
        yield
        close_reply = getattr(state.bus, "close_reply", None)  # the reply inbox (Redis bus only)
        if close_reply is not None:
            await close_reply()
        state.submissions.close()  # store and send what was accepted
        state.api_keys.close()
        state.background.shutdown(wait=True)  # finish sending accepted batches to the broker
        state.db.dispose()

    app = FastAPI(
        title="Ensemble-Hub",
        version=info.VERSION,
        description="Several language models answer together: OpenAI-compatible, queue-backed.",
        lifespan=lifespan,
        responses=ERROR_RESPONSES,
    )
    celery = make_celery(queue_settings, name="ensemblehub-api")
    # the API must answer fast when the broker is down instead of retrying for a minute
    celery.conf.broker_connection_max_retries = 1
    celery.conf.task_publish_retry_policy = {
        "max_retries": 2,
        "interval_start": 0,
        "interval_step": 0.2,
        "interval_max": 0.5,
    }
    app.state.hub = AppState(
        settings=settings,
        queue_settings=queue_settings,
        db=Database.from_settings(database_settings),
        celery=celery,
        bus=event_bus_for(queue_settings.broker_url),
        startup_spec=startup_spec,
        rate_limiter=rate_limiter_for(
            queue_settings.broker_url,
            limit=settings.rate_limit_requests,
            window_s=settings.rate_limit_window_s,
        ),
    )
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, limit=settings.max_request_bytes)
    app.include_router(info.router)
    protected = [Depends(require_api_key)]
    app.include_router(completions.router, dependencies=protected)
    app.include_router(ensemble.router, dependencies=protected)
    app.include_router(batches.router, dependencies=protected)
    app.include_router(jobs.router, dependencies=protected)
    app.include_router(files.router, dependencies=protected)
    app.include_router(openai_batches.router, dependencies=protected)
    metrics.install(app, queue_settings)  # GET /metrics, open like /status; times every request
    app.add_middleware(RequestId)  # outermost: every answer carries it, errors included
    return app
