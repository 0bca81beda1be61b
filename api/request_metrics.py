"""HTTP request latency of this API process, for ``GET /metrics``.

Requests are timed where they happen, in memory: one write to Postgres per request would cost
more than most requests. With several API processes on one host (``uvicorn --workers N``) set
``PROMETHEUS_MULTIPROC_DIR`` to an empty folder shared by them: prometheus_client then keeps
the values in files there and a scrape of any process reports all of them. Across hosts,
Prometheus scrapes every API instance and sums the histograms over ``instance``.
"""

from __future__ import annotations

import os
import time

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class RequestMetrics:
    """This process's request histogram (one per app, so several apps in one process never
    clash in a global registry)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.duration = Histogram(
            "ensemblehub_http_request_duration_seconds",
            "HTTP requests by method, route template and status, until the last body byte is sent",
            ["method", "route", "status"],
            buckets=REQUEST_BUCKETS_S,
            registry=self.registry,
        )
        self.submission_groups = Histogram(
            "ensemblehub_submission_group_rows",
            "submissions stored together in one INSERT and COMMIT and sent in one broker pipeline",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=self.registry,
        )
        self.multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None

    def exposition(self) -> bytes:
        if self.multiprocess_dir:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=self.multiprocess_dir)
            return generate_latest(registry)
        return generate_latest(self.registry)


class RequestTiming:
    """ASGI middleware: observe each HTTP request under its route template (``/v1/jobs/{job_id}``),
    never its raw path, so the number of series stays small; unknown paths share one label."""

    def __init__(self, app: ASGIApp, metrics: RequestMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.duration.labels(scope.get("method", ""), route, str(status)).observe(
                time.perf_counter() - started
            )
