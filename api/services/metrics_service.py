"""``GET /metrics``: the cluster's numbers from Postgres and Redis, plus this process's requests.

Where each number comes from, so that it is right with any number of API and worker processes:

- jobs by state: ``queued`` and ``running`` are counted live (an index scan bounded by the
  queue limit); final states are the running totals that the final transitions add to
  ``metric_counters`` (see ``persistence.metrics_repository``), so no scrape scans all jobs.
- job latency, tokens per model, rounds per job, segment wins per method and model: counters
  and histogram buckets in ``metric_counters``, written by whichever process (worker,
  sweeper, API) ended the job, in the same transaction. Every API instance reports the same
  cluster-wide values: aggregate them with ``max``, not ``sum``, over instances.
- queue depth: the length of each Celery queue's Redis list (and its priority lists), read
  at scrape time; tasks a worker has taken but not finished are not in the queue.
- request latency: this process's histogram (``api.request_metrics``), summed over instances.

A scrape costs two small queries and one Redis pipeline. When Postgres or Redis is down the
scrape still answers, with ``ensemblehub_dependency_up{dependency=...} 0`` and without the
numbers that needed it.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from sqlalchemy.exc import SQLAlchemyError

from api.state import AppState
from jobqueue.contract import ALL_QUEUES
from persistence import metrics_repository, repository
from persistence.metrics_repository import METRICS, MetricDef
from persistence.models import FINAL_JOB_STATUSES

log = logging.getLogger(__name__)

PREFIX = "ensemblehub_"
# kombu's Redis transport keeps messages of priority p > 0 in "<queue>\x06\x16<p>"
_PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")


class ClusterSnapshot:
    """What one scrape read; ``collect`` turns it into metric families."""

    def __init__(self) -> None:
        self.database_up = False
        self.broker_up: bool | None = None  # None: the broker is not Redis (embedded mode)
        self.open_jobs: dict[str, int] = {}
        self.counters: list[tuple[str, dict[str, str], float]] = []
        self.workers_alive: int | None = None
        self.queue_depth: dict[str, int] = {}

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            PREFIX + "dependency_up", "1 when this scrape could read the dependency", labels=["dependency"]
        )
        up.add_metric(["database"], 1.0 if self.database_up else 0.0)
        if self.broker_up is not None:
            up.add_metric(["broker"], 1.0 if self.broker_up else 0.0)
        yield up
        if self.queue_depth:
            depth = GaugeMetricFamily(
                PREFIX + "queue_depth", "Tasks waiting in each Celery queue (Redis)", labels=["queue"]
            )
            for queue, n in self.queue_depth.items():
                depth.add_metric([queue], float(n))
            yield depth
        if not self.database_up:
            return
        if self.workers_alive is not None:
            yield GaugeMetricFamily(
                PREFIX + "workers_alive", "Worker processes with a recent heartbeat", value=self.workers_alive
            )
        yield from self._stored_families()

    def _stored_families(self) -> Iterator[Metric]:
        by_name: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
        for name, labels, value in self.counters:
            by_name[name].append((labels, value))
        finished = {labels.get("state", ""): value for labels, value in by_name.get("jobs_finished", [])}
        jobs = GaugeMetricFamily(
            PREFIX + "jobs",
            "Jobs by state: queued and running now; succeeded, failed and cancelled in total",
            labels=["state"],
        )
        for state, n in self.open_jobs.items():
            jobs.add_metric([state], float(n))
        for state in FINAL_JOB_STATUSES:
            jobs.add_metric([state], finished.get(state, 0.0))
        yield jobs
        for metric in METRICS.values():
            if metric.kind == "histogram":
                yield _histogram(metric, by_name)
            else:
                yield _counter(metric, by_name.get(metric.name, []))


def _counter(metric: MetricDef, rows: list[tuple[dict[str, str], float]]) -> Metric:
    family = CounterMetricFamily(PREFIX + metric.name, metric.help, labels=list(metric.labels))
    for labels, value in sorted(rows, key=lambda r: [r[0].get(k, "") for k in metric.labels]):
        family.add_metric([labels.get(k, "") for k in metric.labels], value)
    return family


def _histogram(metric: MetricDef, by_name: dict[str, list[tuple[dict[str, str], float]]]) -> Metric:
    """Stored buckets hold the observations that fell in them; Prometheus wants cumulative ones."""
    per_series: dict[tuple[str, ...], dict[float, float]] = defaultdict(dict)
    for labels, value in by_name.get(metric.name + "_bucket", []):
        key = tuple(labels.get(k, "") for k in metric.labels)
        bound = float(labels.get("le", "+Inf"))
        per_series[key][bound] = per_series[key].get(bound, 0.0) + value
    sums = {
        tuple(labels.get(k, "") for k in metric.labels): value
        for labels, value in by_name.get(metric.name + "_sum", [])
    }
    family = HistogramMetricFamily(PREFIX + metric.name, metric.help, labels=list(metric.labels))
    for key in sorted(per_series):
        counts = per_series[key]
        bounds = sorted(set(metric.buckets) | set(counts) | {float("inf")})
        running, buckets = 0.0, []
        for bound in bounds:
            running += counts.get(bound, 0.0)
            buckets.append(("+Inf" if bound == float("inf") else _le(bound), running))
        family.add_metric(list(key), buckets, sums.get(key, 0.0))
    return family


def _le(bound: float) -> str:
    return str(int(bound)) if bound.is_integer() else repr(bound)


class _Collector:
    def __init__(self, snapshot: ClusterSnapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        return self.snapshot.collect()


def read_snapshot(state: AppState, broker: redis.Redis | None) -> ClusterSnapshot:
    snapshot = ClusterSnapshot()
    try:
        with state.db.transaction() as session:
            snapshot.open_jobs = metrics_repository.count_open_jobs(session)
            snapshot.counters = metrics_repository.read_counters(session)
            snapshot.workers_alive = len(repository.live_workers(session))
        snapshot.database_up = True
    except SQLAlchemyError as exc:
        log.warning("metrics: database unavailable: %s", exc)
    if broker is not None:
        try:
            snapshot.queue_depth = queue_depths(broker)
            snapshot.broker_up = True
        except (redis.RedisError, OSError) as exc:
            log.warning("metrics: broker unavailable: %s", exc)
            snapshot.broker_up = False
    return snapshot


def queue_depths(broker: redis.Redis) -> dict[str, int]:
    pipe = broker.pipeline(transaction=False)
    for queue in ALL_QUEUES:
        for suffix in _PRIORITY_SUFFIXES:
            pipe.llen(queue + suffix)
    lengths: list[Any] = pipe.execute()
    n = len(_PRIORITY_SUFFIXES)
    return {queue: int(sum(lengths[i * n : (i + 1) * n])) for i, queue in enumerate(ALL_QUEUES)}


def broker_client(broker_url: str) -> redis.Redis | None:
    """A Redis client for queue lengths, or None when the broker is not Redis (embedded mode)."""
    if urlparse(broker_url).scheme not in ("redis", "rediss"):
        return None
    return redis.Redis.from_url(broker_url, socket_timeout=2, socket_connect_timeout=2)


def exposition(state: AppState, broker: redis.Redis | None, process_metrics: bytes) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(read_snapshot(state, broker)))  # type: ignore[arg-type]
    return generate_latest(registry) + process_metrics
