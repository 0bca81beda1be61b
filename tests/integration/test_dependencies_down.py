"""/status and requests when a dependency does not answer (real connections to closed ports).

Redis is the transport only. A request that needs it to be answered (a synchronous
completion, a stream) answers 503 with Retry-After and leaves nothing behind; a batch (202,
asynchronous by contract) is accepted into Postgres, and the sweeper sends its items once the
broker is back."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api.app import create_app
from jobqueue.celery_config import make_celery
from jobqueue.settings import QueueSettings
from persistence import batch_repository
from persistence.db import Database
from persistence.models import Job
from persistence.settings import DatabaseSettings
from tests import services
from workers.settings import WorkerSettings
from workers.sweeper import sweep

DEAD_REDIS = "redis://127.0.0.1:1/3"
DEAD_PG = "postgresql+psycopg://postgres@127.0.0.1:1/nothing"


def _app(database_url: str):  # type: ignore[no-untyped-def]
    return create_app(
        queue_settings=QueueSettings(broker_url=DEAD_REDIS),
        database_settings=DatabaseSettings(database_url=database_url),
    )


def test_status_is_503_when_the_broker_is_unreachable(database_url):
    with TestClient(_app(database_url)) as client:
        resp = client.get("/status")
    assert resp.status_code == 503
    body = resp.json()
    assert body["checks"]["broker"]["ok"] is False
    assert body["checks"]["database"]["ok"] is True


def test_status_is_503_and_requests_get_503_when_the_database_is_unreachable():
    app = create_app(
        queue_settings=QueueSettings(broker_url=DEAD_REDIS),
        database_settings=DatabaseSettings(database_url=DEAD_PG, connect_timeout_s=1),
    )
    with TestClient(app) as client:
        assert client.get("/status").status_code == 503
        resp = client.post("/v1/ensemble/inference", json={"input": "hi", "max_tokens": 4})
    assert resp.status_code == 503
    assert resp.headers["Retry-After"]
    assert resp.json()["error"]["code"] == "database_unavailable"


def test_a_synchronous_submit_with_the_broker_down_is_a_503_that_stores_nothing(database_url):
    db = Database(database_url)
    try:
        with db.transaction() as session:
            before = session.scalar(select(func.count()).select_from(Job))
        with TestClient(_app(database_url)) as client:
            headers = {"Idempotency-Key": "broker-down-1"}
            for _ in range(2):  # the retry with the same key is refused the same way, not attached
                resp = client.post(
                    "/v1/ensemble/inference", json={"input": "hi", "max_tokens": 4}, headers=headers
                )
                assert resp.status_code == 503
                assert resp.headers["Retry-After"]
                assert resp.json()["error"]["code"] == "broker_unavailable"
            # reads need only Postgres: they go on
            assert client.get("/v1/jobs").status_code == 200
        with db.transaction() as session:
            assert session.scalar(select(func.count()).select_from(Job)) == before
            assert session.scalar(select(Job).where(Job.idempotency_key == "broker-down-1")) is None
    finally:
        db.dispose()


def test_a_batch_with_the_broker_down_is_accepted_and_the_sweeper_sends_it_later(database_url):
    db = Database(database_url)
    batch_id = None
    try:
        with TestClient(_app(database_url)) as client:
            resp = client.post("/v1/ensemble/batch", json={"examples": [{"input": "a"}, {"input": "b"}]})
        assert resp.status_code == 202, resp.text
        batch_id = resp.json()["id"]
        with db.transaction() as session:
            items = batch_repository.batch_items(session, batch_id)
            assert [(j.status, j.enqueued_at) for j in items] == [("queued", None)] * 2
        # the broker is back: the sweeper (here called directly) sends both items
        with services.private_redis_db() as live_broker:
            celery = make_celery(QueueSettings(broker_url=live_broker))
            report = sweep(db, celery, WorkerSettings(unsent_grace_s=0))
        assert {j.id for j in items} <= set(report.sent)
        with db.transaction() as session:
            assert batch_repository.get_batch(session, batch_id).status == "in_progress"
            assert all(j.enqueued_at for j in batch_repository.batch_items(session, batch_id))
    finally:
        if batch_id:  # no worker listens to that broker: leave no queued items to other tests
            with db.transaction() as session:
                batch_repository.cancel_batch(session, batch_id)
        db.dispose()


def test_a_background_job_with_the_broker_down_is_accepted_and_waits_unsent(database_url):
    with TestClient(_app(database_url)) as client:
        resp = client.post(
            "/v1/chat/completions",
            json={"model": "ensemble", "prompt": "hi", "max_tokens": 4, "background": True},
        )
        assert resp.status_code == 202, resp.text
        job_id = resp.json()["id"]
        try:
            db = Database(database_url)
            with db.transaction() as session:
                job = session.get(Job, job_id)
                assert (job.status, job.enqueued_at) == ("queued", None)  # the sweeper's to send
            db.dispose()
        finally:
            assert client.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"
