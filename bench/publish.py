"""Sending run_job tasks to Redis: through Celery and kombu vs from the template, in-process.

Times ``enqueue_jobs_through_kombu`` (the old path, still the fallback) and ``enqueue_jobs``
(the template of ``jobqueue.redis_publisher``) for groups of 1 and 50 jobs, against the local
Redis on a db number of its own (nothing reads it; the lists are emptied between calls).
Prints the medians of ``--calls`` calls: wall and CPU time per call and per message.

    PYTHONPATH=$PWD flock /work/wt/notes/bench.lock python bench/publish.py --calls 300
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import redis

from jobqueue import redis_publisher
from jobqueue.celery_config import enqueue_jobs, enqueue_jobs_through_kombu, make_celery
from jobqueue.contract import MODELS_QUEUE
from jobqueue.settings import QueueSettings
from persistence.models import new_id
from tests.services import private_redis_db

Send = Callable[..., None]


def _time(send: Send, app: object, broker: redis.Redis, size: int, calls: int) -> tuple[float, float]:
    """Median wall and CPU seconds of one call sending ``size`` messages."""
    walls, cpus = [], []
    for _ in range(calls):
        ids = [new_id("job") for _ in range(size)]
        wall, cpu = time.perf_counter(), time.process_time()
        send(app, ids)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
        assert broker.llen(MODELS_QUEUE) == size
        broker.delete(MODELS_QUEUE)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    with private_redis_db() as broker_url:
        app = make_celery(QueueSettings(broker_url=broker_url))
        broker = redis.Redis.from_url(broker_url)
        paths: list[tuple[str, Send]] = [("kombu", enqueue_jobs_through_kombu), ("template", enqueue_jobs)]
        for _, send in paths:  # warm: connections, the template, Celery's lazy set-up
            for _ in range(20):
                send(app, [new_id("job")])
        broker.delete(MODELS_QUEUE)
        publisher = redis_publisher.publisher_for(app)
        assert publisher is not None and publisher.declined is None, "no template: nothing to compare"
        rows = []
        for size in (1, 50):
            for name, send in paths:
                wall, cpu = _time(send, app, broker, size, args.calls)
                rows.append((name, size, wall, cpu))
    print(f"median of {args.calls} calls, local Redis\n")
    print(f"{'path':<9} {'msgs':>4} {'ms/call':>8} {'ms/msg':>7} {'cpu ms/call':>11} {'cpu ms/msg':>10}")
    for name, size, wall, cpu in rows:
        print(
            f"{name:<9} {size:>4} {wall * 1e3:>8.3f} {wall * 1e3 / size:>7.3f} "
            f"{cpu * 1e3:>11.3f} {cpu * 1e3 / size:>10.3f}"
        )


if __name__ == "__main__":
    main()
