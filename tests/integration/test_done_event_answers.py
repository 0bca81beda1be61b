"""A synchronous request is answered from the worker's done event, which carries the final
state the worker committed: the API does not read the job row again. When the event is lost,
the API's poll of Postgres still answers. And a worker's settlement, its metric counters in
the same statement, stays fenced: a stale attempt writes and counts nothing.

Real Postgres, Redis and worker; the API runs in-process so that its SQL can be counted."""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import event, select, update

from api.app import create_app
from api.services import job_service
from jobqueue.settings import QueueSettings
from persistence import recovery, repository
from persistence.db import Database
from persistence.models import Job, MetricCounter, utcnow
from persistence.settings import DatabaseSettings
from tests import services

# what ``load_job`` (the re-read of one job) sends; a count of queued jobs does not match
JOB_ROW_READ = re.compile(r"FROM jobs\s+WHERE jobs\.id = ", re.IGNORECASE)


@contextmanager
def in_process_api(database_url: str, broker_url: str) -> Iterator[tuple[TestClient, list[str]]]:
    """The API app on the given database and broker, and the SQL it sends (in order)."""
    app = create_app(
        queue_settings=QueueSettings(broker_url=broker_url),
        database_settings=DatabaseSettings(database_url=database_url),
    )
    statements: list[str] = []
    event.listen(
        app.state.hub.db.engine,
        "before_cursor_execute",
        lambda _conn, _cursor, statement, *_args: statements.append(statement),
    )
    with TestClient(app, client=("127.0.0.1", 40000)) as client:
        yield client, statements


def chat_body(marker: str) -> dict[str, object]:
    return {
        "model": "ensemble",
        "messages": [{"role": "user", "content": f"Say hi ({marker})"}],
        "max_tokens": 6,
        "temperature": 0,
    }


def test_the_done_event_carries_the_committed_result_and_the_api_reads_no_job_row(stack):
    listener = redis.Redis.from_url(stack.broker_url).pubsub(ignore_subscribe_messages=True)
    listener.psubscribe("ensemblehub:job:*:events")
    try:
        with in_process_api(stack.database_url, stack.broker_url) as (client, statements):
            client.post("/v1/chat/completions", json=chat_body("warm-up")).raise_for_status()
            statements.clear()
            resp = client.post("/v1/chat/completions", json=chat_body("counted"))
            during = list(statements)
            assert resp.status_code == 200, resp.text
            answer = resp.json()
            stored = client.get(f"/v1/jobs/{answer['id']}").json()
        done, types = None, []
        deadline = time.monotonic() + 10
        while done is None and time.monotonic() < deadline:
            message = listener.get_message(timeout=1)
            if message and answer["id"] in message["channel"].decode():
                data = json.loads(message["data"])
                types.append(data["type"])
                done = data if data["type"] == "done" else None
    finally:
        listener.close()

    # the worker's done event carries what it committed, as a read of the row returns it
    assert done is not None, "no done event was published"
    assert done["status"] == "succeeded" and done["attempt"] == stored["attempts"] == 1
    assert done["final"]["result"] == stored["result"]
    assert done["final"]["usage"] == stored["usage"]
    # nobody streams a synchronous request's text: its job publishes the done event alone
    assert stored["request"]["segment_events"] is False
    assert types == ["done"], types
    # the API waited through its process's reply inbox (no subscription of the request's own)
    assert stored["request"]["reply_to"].startswith("ensemblehub:reply:")
    # the answer came from the event: the request inserted its job and read no job row
    assert any(s.lstrip().upper().startswith("INSERT INTO JOBS") for s in during), during
    assert not [s for s in during if JOB_ROW_READ.search(s)], during
    assert answer["choices"][0]["message"]["content"] == stored["result"]["text"]
    assert answer["usage"]["completion_tokens"] == stored["usage"]["completion_tokens"]


def _queued_job(db: Database, marker: str, timeout_s: float = 10) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with db.transaction() as session:
            for job in repository.list_jobs(session, status="queued", limit=50):
                if marker in json.dumps(job.request):
                    return job.id
        time.sleep(0.05)
    raise AssertionError(f"no queued job for {marker}")


def test_with_the_done_event_lost_the_poll_of_postgres_answers(stack, monkeypatch):
    monkeypatch.setattr(job_service, "RECHECK_S", 0.2)  # the safety net's period, shortened
    marker = uuid.uuid4().hex
    db = Database(stack.database_url)
    # a broker that no worker consumes: the test is the worker, and it publishes nothing
    with (
        services.private_redis_db() as broker_url,
        in_process_api(stack.database_url, broker_url) as (
            client,
            _,
        ),
    ):
        answered: dict[str, object] = {}
        request = threading.Thread(
            target=lambda: answered.update(resp=client.post("/v1/chat/completions", json=chat_body(marker)))
        )
        request.start()
        try:
            job_id = _queued_job(db, marker)
            with db.transaction() as session:
                claim = repository.claim_job(session, job_id, worker="test-worker")
            assert claim is not None
            result = {"text": "polled answer", "usage": {"prompt_tokens": 3, "completion_tokens": 2}}
            with db.transaction() as session:
                settled = repository.finish_job(
                    session, job_id, result=result, usage=result["usage"], attempt=claim.attempts, claim=claim
                )
            assert settled is not None
            finished = time.monotonic()
        finally:
            request.join(timeout=30)
            db.dispose()
    resp = answered["resp"]
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["id"] == job_id
    assert body["choices"][0]["message"]["content"] == "polled answer"
    assert time.monotonic() - finished < 5, "answered by the poll, not by the request's timeout"


def _counter(db: Database, name: str, labels: str) -> float:
    with db.transaction() as session:
        value = session.scalar(
            select(MetricCounter.value).where(MetricCounter.name == name, MetricCounter.labels == labels)
        )
    return float(value or 0.0)


@pytest.mark.parametrize("in_batch", [False, True], ids=["one statement", "batch item"])
def test_a_settlement_with_its_counters_is_fenced_and_counted_once(in_batch):
    with services.migrated_database() as url:
        db = Database(url)
        try:
            with db.transaction() as s:
                batch_id = None
                if in_batch:
                    from persistence.models import Batch

                    batch = Batch(total=1, status="in_progress")
                    s.add(batch)
                    s.flush()
                    batch_id = batch.id
                job_id = repository.create_job(
                    s, kind="chat", request={"n": 1}, config_version_id=None, batch_id=batch_id
                ).id
            with db.transaction() as s:
                stale = repository.claim_job(s, job_id, worker="w1")
            with db.transaction() as s:
                s.execute(
                    update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow() - timedelta(seconds=60))
                )
                assert recovery.requeue_orphan(s, job_id, dead_after_s=30)
            with db.transaction() as s:
                current = repository.claim_job(s, job_id, worker="w2")
            assert stale is not None and current is not None
            assert (stale.attempts, current.attempts) == (1, 2)
            finished = '{"state":"succeeded"}'
            before = _counter(db, "jobs_finished", finished)

            result = {"text": "stale", "usage": {"per_model": {"m": {"generated": 5}}}}
            with db.transaction() as s:
                assert (
                    repository.finish_job(
                        s, job_id, result=result, usage=None, attempt=stale.attempts, claim=stale
                    )
                    is None
                )
            assert _counter(db, "jobs_finished", finished) == before

            result = {"text": "current", "usage": {"per_model": {"m": {"generated": 3}}}}
            with db.transaction() as s:
                settled = repository.finish_job(
                    s, job_id, result=result, usage=None, attempt=current.attempts, claim=current
                )
            assert settled is not None and settled.snapshot is not None
            assert (settled.snapshot.status, settled.snapshot.result["text"]) == ("succeeded", "current")
            assert settled.batch_status == ("completed" if in_batch else None)
            with db.transaction() as s:
                assert (
                    repository.finish_job(
                        s, job_id, result=result, usage=None, attempt=current.attempts, claim=current
                    )
                    is None
                )  # a second delivery of the same attempt
            assert _counter(db, "jobs_finished", finished) == before + 1
            tokens = '{"kind":"generated","model":"m"}'
            assert _counter(db, "model_tokens", tokens) == 3
            with db.transaction() as s:
                job = repository.get_job(s, job_id)
                assert (job.status, job.result["text"], job.worker) == ("succeeded", "current", "w2")
        finally:
            db.dispose()


def test_a_settlement_statement_is_compiled_once_per_process():
    """The settlement with its counters has one shape whatever the job's numbers (the deltas
    are array parameters), so the second job's statement comes from SQLAlchemy's compiled
    cache: compiling it took ~3 ms of a worker's CPU per job."""
    from sqlalchemy.engine.default import CACHE_HIT

    with services.migrated_database() as url:
        db = Database(url)
        try:
            hits: list[tuple[str, object]] = []
            event.listen(
                db.engine,
                "before_cursor_execute",
                lambda _c, _cur, statement, _p, context, _m: hits.append((statement, context.cache_hit)),
            )
            for n, model in enumerate(("first", "second-model", "third")):
                with db.transaction() as s:
                    job_id = repository.create_job(s, kind="chat", request={}, config_version_id=None).id
                with db.transaction() as s:
                    claim = repository.claim_job(s, job_id, worker="w1")
                # different models and counts: different label sets and delta rows per job
                per_model = {
                    model: {"generated": n + 1, "prompt": 4},
                    **({"extra": {"generated": 1}} if n else {}),
                }
                result = {
                    "text": "x",
                    "usage": {"per_model": per_model},
                    "trace": {"rounds": [{"winner": model}] * (n + 1)},
                }
                hits.clear()
                with db.transaction() as s:
                    settled = repository.finish_job(
                        s, job_id, result=result, usage=None, attempt=claim.attempts, claim=claim
                    )
                assert settled is not None
                settlement = [hit for statement, hit in hits if "metric_counters" in statement]
                assert len(settlement) == 1, hits  # the UPDATE and its counters: one statement
                if n:
                    assert settlement[0] == CACHE_HIT
            assert _counter(db, "model_tokens", '{"kind":"generated","model":"second-model"}') == 2
            assert _counter(db, "jobs_finished", '{"state":"succeeded"}') == 3
        finally:
            db.dispose()
