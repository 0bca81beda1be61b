"""``GET /metrics`` in Prometheus' text format (design: ``api.services.metrics_service``)."""

from __future__ import annotations

from dataclasses import dataclass

import redis
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from api.guards import require_api_key
from api.request_metrics import RequestMetrics, RequestTiming
from api.services import metrics_service
from api.state import state_of
from jobqueue.settings import QueueSettings

router = APIRouter(tags=["metrics"])


@dataclass
class MetricsState:
    requests: RequestMetrics
    broker: redis.Redis | None


def install(app: FastAPI, queue_settings: QueueSettings) -> None:
    """Time every request (outermost middleware: 413s and 500s count too) and serve /metrics."""
    requests = RequestMetrics()
    app.state.metrics = MetricsState(requests, metrics_service.broker_client(queue_settings.broker_url))
    app.add_middleware(RequestTiming, metrics=requests)
    app.state.hub.submissions.on_group = requests.submission_groups.observe
    app.include_router(router)


# like every endpoint but `/` and `/status`: a key once keys exist (Prometheus sends it as its
# scrape `authorization` credentials), the local machine only in open mode
@router.get("/metrics", response_class=Response, dependencies=[Depends(require_api_key)])
async def metrics(request: Request) -> Response:
    """Jobs by state, queue depth, request and job latency, tokens per model, rounds per job and
    segment wins. Open like /status: scrape it from the internal network."""
    holder: MetricsState = request.app.state.metrics
    body = await run_in_threadpool(
        metrics_service.exposition, state_of(request), holder.broker, holder.requests.exposition()
    )
    return Response(body, media_type=CONTENT_TYPE_LATEST)
