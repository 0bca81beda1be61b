"""Restart Redis (kill -9, no persistence: every message is lost) during a stream of 200
submissions: every submission that got a 2xx finishes, none gets a 500.

While Redis is down, what must be answered now (synchronous completions, streams) answers
503 with Retry-After and stores nothing; what is answered later (background jobs, batches:
202) is accepted into Postgres and sent by the sweeper once Redis is back. Messages that
Redis lost with its data are noticed by the sweeper's marker key and sent again."""

from __future__ import annotations

import time
from collections import Counter

import pytest
from sqlalchemy import select

from persistence.db import Database
from persistence.models import Job
from tests.faults import load
from tests.faults.infra import report

pytestmark = pytest.mark.usefixtures("fault_logs_on_failure")

SUBMISSIONS = 200
DOWN_S = 3.0


def test_every_accepted_submission_finishes_across_a_redis_restart(fault_stack, redis_server):
    def restart_redis() -> None:
        redis_server.kill()
        time.sleep(DOWN_S)
        redis_server.start()

    outcomes, times = load.run(
        lambda: fault_stack.client(timeout=120), SUBMISSIONS, fault_after=60, fault=restart_redis
    )
    with fault_stack.client() as client:
        final = load.wait_all_final(client, outcomes)
        stuck = [
            j["id"]
            for status in ("queued", "running")
            for j in client.get("/v1/jobs", params={"status": status, "limit": 1000}).json()["data"]
        ]

    accepted = [o for o in outcomes if o.accepted]
    refused = [o for o in outcomes if o.status == 503]
    server_errors = [
        o for o in outcomes if o.status is not None and o.status >= 500 and o.status not in (503, 504)
    ]
    frames_500 = sum(o.stream_frames_500 for o in outcomes)
    assert len(outcomes) == SUBMISSIONS
    assert not [o for o in outcomes if o.status is None], "the API answered every request"
    assert not server_errors and frames_500 == 0, "never a 500"
    assert {o.code for o in refused} <= {"broker_unavailable"}
    assert set(final["jobs"]) <= {"succeeded"} and set(final["batch_items"]) <= {"succeeded"}
    assert not stuck, f"jobs left behind: {stuck}"
    # a refused synchronous request left nothing behind (its Idempotency-Key names no job)
    keys = [o.idempotency_key for o in refused if o.idempotency_key]
    db = Database(fault_stack.database_url)
    try:
        with db.transaction() as session:
            leftovers = session.scalars(select(Job.id).where(Job.idempotency_key.in_(keys))).all()
    finally:
        db.dispose()
    assert not leftovers
    assert refused, "some submissions met the outage"
    jobs_done = sum(final["jobs"].values()) + sum(final["batch_items"].values())
    report(
        "Redis killed (no persistence) and restarted during a stream of submissions",
        tried=f"{SUBMISSIONS} submissions from 4 clients ({', '.join(f'{k}: {n}' for k, n in Counter(o.kind for o in outcomes).items())}); "
        f"one every 60 ms; Redis down {DOWN_S:.0f} s after the 60th answer",
        answers=load.statuses(outcomes),
        refused_with_503=f"{len(refused)} (Retry-After; nothing stored: {len(keys)} keys checked)",
        accepted=f"{len(accepted)} submissions = {jobs_done} jobs, all finished: {dict(final['jobs'] + final['batch_items'])}",
        server_errors_500=len(server_errors) + frames_500,
        wall_time=f"{times['end'] - times['start']:.1f} s",
        lost=len(stuck),
    )
