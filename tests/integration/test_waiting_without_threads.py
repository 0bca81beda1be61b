"""Synchronous requests wait without holding a thread: with 200 of them open on one API
process, ``GET /status`` (a plain route that needs a pool thread) still answers at once.

The API here has a Redis db of its own that no worker consumes, so every job stays queued
for as long as the test needs; cancelling the jobs then answers every waiting request
(409 ``cancelled``) through the job's done event, and none is left hanging."""

from __future__ import annotations

import asyncio
import statistics
import time

import httpx
import pytest

from persistence import repository
from persistence.db import Database
from tests import services

WAITING = 200
STATUS_LIMIT_S = 0.5


@pytest.fixture
def idle_api(stack, tmp_path):  # type: ignore[no-untyped-def]
    """An API process on the stack's database with a broker that no worker listens to."""
    with services.private_redis_db() as broker_url:
        env = services.service_env(stack.database_url, broker_url, ENSEMBLEHUB_RATE_LIMIT_REQUESTS="0")
        api, base = services.start_api(env, tmp_path, [])  # keeps the stack's config version
        try:
            yield base
        finally:
            api.stop()


def _queued(database_url: str) -> int:
    db = Database(database_url)
    try:
        with db.transaction() as session:
            return repository.count_jobs(session, status="queued")
    finally:
        db.dispose()


async def _status_latencies(client: httpx.AsyncClient, times: int = 5) -> list[float]:
    latencies = []
    for _ in range(times):
        started = time.perf_counter()
        status = await client.get("/status")
        latencies.append(time.perf_counter() - started)
        assert status.status_code == 200, status.text
        await asyncio.sleep(0.1)
    return latencies


async def _hold_open_then_release(
    base: str, database_url: str
) -> tuple[list[float], list[float], list[httpx.Response]]:
    limits = httpx.Limits(max_connections=WAITING + 10, max_keepalive_connections=WAITING + 10)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:
        idle = await _status_latencies(client)
        before = await asyncio.to_thread(_queued, database_url)
        body = {"model": "ensemble", "prompt": "Wait with me.", "max_tokens": 2, "timeout": 90}
        requests = [
            asyncio.create_task(client.post("/v1/chat/completions", json={**body, "user": str(i)}))
            for i in range(WAITING)
        ]
        deadline = time.monotonic() + 60
        while await asyncio.to_thread(_queued, database_url) < before + WAITING:
            assert time.monotonic() < deadline, "the requests were not all accepted"
            assert not any(r.done() for r in requests), [r.result().text for r in requests if r.done()][:3]
            await asyncio.sleep(0.2)
        waiting = await _status_latencies(client)  # every request is now waiting on its job
        assert not any(r.done() for r in requests), "a request stopped waiting early"
        jobs = await client.get("/v1/jobs", params={"status": "queued", "limit": WAITING})
        ids = [job["id"] for job in jobs.json()["data"]]
        for job_id in ids:  # the waiters' jobs are the newest queued ones
            assert (await client.post(f"/v1/jobs/{job_id}/cancel")).status_code == 200
        answers = await asyncio.wait_for(asyncio.gather(*requests), timeout=60)
    return idle, waiting, answers


def _ms(latencies: list[float]) -> str:
    return ", ".join(f"{t * 1000:.0f}" for t in latencies) + " ms"


def test_status_answers_at_once_while_200_synchronous_requests_wait(idle_api, stack):
    idle, waiting, answers = asyncio.run(_hold_open_then_release(idle_api, stack.database_url))
    print(f"/status idle: {_ms(idle)}; with {WAITING} waiting requests: {_ms(waiting)}")
    # the median: one sample may meet a burst of the waiters' database re-reads. On a loaded
    # machine even the idle /status takes a few hundred ms, so the bound follows it; waiting
    # requests that held threads would make it wait for their timeout (90 s) instead
    bound = max(STATUS_LIMIT_S, 3 * statistics.median(idle))
    assert statistics.median(waiting) < bound, (idle, waiting)
    assert [a.status_code for a in answers] == [409] * WAITING, {
        a.text for a in answers if a.status_code != 409
    }
    assert {a.json()["error"]["code"] for a in answers} == {"cancelled"}
