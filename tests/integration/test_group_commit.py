"""Group commit (api/services/group_commit.py): concurrent submissions share one INSERT (on
Postgres its own transaction: no BEGIN, no COMMIT) and one broker pipeline; a bad row fails alone; every grouped job still runs."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import redis
from sqlalchemy import event, func, select
from sqlalchemy.exc import DataError, IntegrityError

from api.services.group_commit import GroupCommit
from jobqueue.celery_config import enqueue_jobs, make_celery
from jobqueue.settings import QueueSettings
from persistence import repository
from persistence.db import Database
from persistence.models import Job
from tests import services

SUBMISSION = {
    "model": "ensemble",
    "messages": [{"role": "user", "content": "What is 2+2?"}],
    "max_tokens": 2,
    "background": True,
}


@pytest.fixture
def committer(database_url) -> Iterator[tuple[GroupCommit, Database, redis.Redis, list[str]]]:
    """A GroupCommit on the test database and a Redis db of its own (no worker takes from it),
    lingering long enough that a burst of threads lands in one group; ``statements`` records
    the SQL it sends."""
    with services.private_redis_db() as broker_url:
        db = Database(database_url)
        celery = make_celery(QueueSettings(broker_url=broker_url))
        statements: list[str] = []
        event.listen(db.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
        # the DBAPI connection's mode at each statement: autocommit sends no BEGIN before it
        event.listen(
            db.engine,
            "before_cursor_execute",
            lambda *a: statements.append(f"AUTOCOMMIT={a[1].connection.autocommit}"),
        )
        event.listen(db.engine, "commit", lambda *a: statements.append("COMMIT"))
        group = GroupCommit(db, lambda ids, queues: enqueue_jobs(celery, ids, queues=queues), linger_s=0.3)
        try:
            yield group, db, redis.Redis.from_url(broker_url), statements
        finally:
            group.close()
            db.dispose()


def _submit_together(group: GroupCommit, rows: list[dict]) -> list[object]:
    """Submit each row from a thread of its own, all at once; each thread's outcome or error."""
    results: list[object] = [None] * len(rows)
    start = threading.Barrier(len(rows))

    def one(i: int) -> None:
        start.wait()
        try:
            results[i] = group.submit(rows[i], queue="models")
        except Exception as exc:  # noqa: BLE001 - the test looks at each error
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(rows))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def _row(**fields: object) -> dict:
    return repository.new_job_row(kind="chat", request={"grouped": True}, config_version_id=None, **fields)


def _stored(db: Database, ids: list[str]) -> int:
    with db.transaction() as session:
        return int(session.scalar(select(func.count()).select_from(Job).where(Job.id.in_(ids))) or 0)


def test_concurrent_submissions_share_one_insert_in_one_round_trip_and_one_pipeline(committer):
    group, db, broker, statements = committer
    rows = [_row() for _ in range(40)]
    results = _submit_together(group, rows)
    assert all(getattr(r, "sent", False) for r in results), results
    inserts = [s for s in statements if s.lstrip().upper().startswith("INSERT")]
    assert len(inserts) == 1, inserts
    assert len(re.findall(r"%\(id__\d+\)s", inserts[0])) == 40  # one row of VALUES per submission
    # one statement is atomic by itself: no BEGIN and no COMMIT round trips around it
    assert statements.count("COMMIT") == 0
    assert statements.count("AUTOCOMMIT=True") == 1 and "AUTOCOMMIT=False" not in statements
    assert _stored(db, [r["id"] for r in rows]) == 40
    assert broker.llen("models") == 40  # every task is on the queue


def test_one_bad_row_fails_alone_and_the_rest_of_its_group_is_stored_and_sent(committer):
    group, db, broker, _ = committer
    rows = [_row() for _ in range(18)]
    too_long = _row(idempotency_key="k" * 300)  # the column holds 255 characters
    twins = [_row(idempotency_key="same-key"), _row(idempotency_key="same-key")]
    results = _submit_together(group, [*rows, too_long, *twins])
    assert all(getattr(r, "sent", False) for r in results[:18]), results
    assert isinstance(results[18], DataError)
    twin_results = results[19:]
    assert sum(isinstance(r, IntegrityError) for r in twin_results) == 1, twin_results
    assert sum(getattr(r, "sent", False) for r in twin_results) == 1, twin_results
    good = [r["id"] for r in rows] + [
        t["id"] for t, r in zip(twins, twin_results, strict=True) if getattr(r, "sent", False)
    ]
    assert _stored(db, good) == 19
    assert _stored(db, [too_long["id"]]) == 0
    assert broker.llen("models") == 19


def _grouped(metrics_text: str) -> tuple[float, float]:
    """(groups, rows) committed so far, from /metrics."""
    count = re.search(r"^ensemblehub_submission_group_rows_count (\S+)$", metrics_text, re.M)
    total = re.search(r"^ensemblehub_submission_group_rows_sum (\S+)$", metrics_text, re.M)
    return (float(count.group(1)) if count else 0.0, float(total.group(1)) if total else 0.0)


def test_a_burst_of_submissions_is_grouped_and_every_job_finishes(stack, show_logs_on_failure):
    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=stack.base_url, timeout=60) as client:
            requests = [client.post("/v1/chat/completions", json=SUBMISSION) for _ in range(48)]
            keyed = [
                client.post(
                    "/v1/chat/completions", json=SUBMISSION, headers={"Idempotency-Key": "burst-twin"}
                )
                for _ in range(2)
            ]
            return list(await asyncio.gather(*requests, *keyed))

    with stack.client() as client:
        groups_before, rows_before = _grouped(client.get("/metrics").text)
        answers = asyncio.run(burst())
        assert [a.status_code for a in answers] == [202] * 50, [
            a.text for a in answers if a.status_code != 202
        ]
        ids = {a.json()["id"] for a in answers}
        assert len(ids) == 49  # the two requests with one Idempotency-Key got one job
        groups, rows = _grouped(client.get("/metrics").text)
        assert rows - rows_before == 49
        # how many share a group depends on how the burst arrives (the exact count is the
        # in-process test's); some must have
        assert groups - groups_before < 49, (groups - groups_before, rows - rows_before)
        deadline = time.monotonic() + 120
        pending = set(ids)
        while pending and time.monotonic() < deadline:
            for job_id in list(pending):
                if client.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded":
                    pending.discard(job_id)
            time.sleep(0.2)
        assert not pending, f"{len(pending)} grouped jobs did not finish"
