"""What the routes need, built once per app (no globals, no environment reads at import)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from celery import Celery
from fastapi import Request

from api.rate_limit import NoRateLimit, RateLimiter
from api.services.group_commit import GroupCommit
from api.settings import ApiSettings
from ensemble_core.spec import EnsembleSpec
from jobqueue.celery_config import enqueue_jobs
from jobqueue.settings import QueueSettings
from jobqueue.webhook_policy import WebhookSettings
from persistence.api_key_cache import ApiKeyCache
from persistence.db import Database


@dataclass
class AppState:
    settings: ApiSettings
    queue_settings: QueueSettings
    db: Database
    celery: Celery
    bus: Any
    # the spec given by `python -m ensemblehub.api` flags; None means "keep the latest version"
    startup_spec: EnsembleSpec | None = None
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    rate_limiter: RateLimiter = field(default_factory=NoRateLimit)
    # work that may finish after the answer (sending the rest of a large batch to the broker)
    background: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="api-background")
    )
    # concurrent submissions share one INSERT, one COMMIT and one broker pipeline
    submissions: GroupCommit = field(init=False)
    # API-key lookups, dropped on every change of a key (api/guards.py)
    api_keys: ApiKeyCache = field(init=False)

    def __post_init__(self) -> None:
        self.api_keys = ApiKeyCache(self.db.url, ttl_s=self.settings.api_key_cache_ttl_s)
        celery = self.celery
        self.submissions = GroupCommit(
            self.db,
            lambda job_ids, queues: enqueue_jobs(celery, job_ids, queues=queues),
            max_rows=self.settings.submit_group_max_rows,
            linger_s=self.settings.submit_group_linger_s,
        )


async def get_state(request: Request) -> AppState:
    """The dependency ``Depends(get_state)``. It is ``async`` so that FastAPI calls it on the
    event loop: a plain ``def`` dependency costs every request a trip through the thread pool.
    Code that has the request calls ``state_of``."""
    return state_of(request)


def state_of(request: Request) -> AppState:
    return request.app.state.hub  # type: ignore[no-any-return]
