"""What the routes need, built once per app (no globals, no environment reads at import)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from celery import Celery
from fastapi import Request

from api.rate_limit import NoRateLimit, RateLimiter
from api.settings import ApiSettings
from ensemble_core.spec import EnsembleSpec
from jobqueue.settings import QueueSettings
from jobqueue.webhook_policy import WebhookSettings
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


def get_state(request: Request) -> AppState:
    return request.app.state.hub  # type: ignore[no-any-return]
