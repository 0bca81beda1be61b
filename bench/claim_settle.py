"""The worker's claim and final write, timed in-process on a real Postgres (no models).

Creates a throwaway migrated database (as the tests do), queues ``--jobs`` jobs, then for each
one times ``job_runner._claim`` and ``job_runner._store`` (a success with a usual result),
or counts the round trips of each (``--round-trips``). Prints the medians.

    PYTHONPATH=$PWD python bench/claim_settle.py --jobs 300
    PSYCOPG_IMPL=python PYTHONPATH=$PWD python bench/claim_settle.py --jobs 50 --round-trips
"""

from __future__ import annotations

import argparse
import statistics
import time
from types import SimpleNamespace

from ensemble_core.stopping import StopSignal
from persistence import repository
from persistence.db import Database
from tests.services import migrated_database
from workers import job_runner
from workers.runtime import ConfigVersionCache
from workers.settings import WorkerSettings

_waits = 0


def _count_round_trips() -> None:
    """Count what psycopg sends (each query, BEGIN and COMMIT included, is answered before the
    next is sent: one round trip each). Needs psycopg's Python implementation, whose PGconn
    methods can be wrapped; timings are then slower, so this is a mode of its own."""
    from psycopg.pq import pq_ctypes

    def counting(send):  # type: ignore[no-untyped-def]
        def wrapper(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            global _waits
            _waits += 1
            return send(self, *args, **kwargs)

        return wrapper

    for name in ("send_query", "send_query_params", "send_prepare", "send_query_prepared"):
        setattr(pq_ctypes.PGconn, name, counting(getattr(pq_ctypes.PGconn, name)))


def _payload() -> dict:
    per_model = {
        m: {"prompt": 12, "generated": 16, "prefilled": 12, "discarded": 4, "forward_passes": 17}
        for m in ("tiny-llama", "tiny-gpt2")
    }
    rounds = [{"winner": "tiny-llama", "accepted": True, "text": "abc"} for _ in range(4)]
    return {
        "text": "hello " * 8,
        "finish_reason": "length",
        "method": "progressive",
        "selected_models": ["tiny-llama", "tiny-gpt2"],
        "usage": {"prompt_tokens": 12, "completion_tokens": 16, "per_model": per_model},
        "trace": {"method": "progressive", "rounds": rounds},
        "timings": {"model_ms": 40.0},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--webhook", action="store_true", help="jobs carry a webhook URL")
    parser.add_argument(
        "--round-trips",
        action="store_true",
        help="count round trips (psycopg's slower Python implementation)",
    )
    args = parser.parse_args()
    if args.round_trips:
        _count_round_trips()
    global _waits
    with migrated_database() as url:
        db = Database(url, pool_size=2)
        runtime = SimpleNamespace(
            db=db, hostname="bench:1", settings=WorkerSettings(), config_versions=ConfigVersionCache()
        )
        with db.transaction() as session:
            spec = {"model_specs": []}
            version = repository.append_config_version(session, spec=spec, content_hash="0" * 64)
            ids = [
                repository.create_job(
                    session,
                    kind="chat",
                    request={"generation": {"prompt": "hi"}},
                    config_version_id=version.id,
                    webhook_url="http://127.0.0.1:9/hook" if args.webhook else None,
                ).id
                for _ in range(args.jobs)
            ]
        claims, stores, claim_trips, store_trips = [], [], [], []
        for job_id in ids:
            _waits, t0 = 0, time.perf_counter()
            claim, _spec = job_runner._claim(runtime, job_id)
            t1, trips = time.perf_counter(), _waits
            _waits = 0
            status, _ = job_runner._store(
                runtime, job_id, claim.attempts, _payload(), StopSignal(), claim=claim
            )
            t2 = time.perf_counter()
            assert status == "succeeded", status
            claims.append(t1 - t0)
            stores.append(t2 - t1)
            claim_trips.append(trips)
            store_trips.append(_waits)
        skip = min(20, len(ids) // 5)  # warm-up: pool connections, compiled-statement cache
        trips = ", round trips {:.0f}" if args.round_trips else ""
        for name, times, counts in (("claim", claims, claim_trips), ("store", stores, store_trips)):
            line = f"{name} p50 {statistics.median(times[skip:]) * 1000:.3f} ms"
            print(line + trips.format(statistics.median(counts[skip:])))
        db.dispose()


if __name__ == "__main__":
    main()
