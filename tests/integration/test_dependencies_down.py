"""/status and requests when a dependency does not answer (real connections to closed ports)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from api.app import create_app
from jobqueue.settings import QueueSettings
from persistence.settings import DatabaseSettings

DEAD_REDIS = "redis://127.0.0.1:1/3"
DEAD_PG = "postgresql+psycopg://postgres@127.0.0.1:1/nothing"


def test_status_is_503_when_the_broker_is_unreachable(database_url):
    app = create_app(
        queue_settings=QueueSettings(broker_url=DEAD_REDIS),
        database_settings=DatabaseSettings(database_url=database_url),
    )
    with TestClient(app) as client:
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


def test_submit_with_the_broker_down_is_a_503_and_the_job_is_failed_visibly(database_url):
    app = create_app(
        queue_settings=QueueSettings(broker_url=DEAD_REDIS),
        database_settings=DatabaseSettings(database_url=database_url),
    )
    with TestClient(app) as client:
        resp = client.post("/v1/ensemble/inference", json={"input": "hi", "max_tokens": 4})
        assert resp.status_code == 503
        assert resp.json()["error"]["code"] == "broker_unavailable"
        failed = client.get("/v1/jobs", params={"status": "failed"}).json()["data"]
    assert any(j["error"]["code"] == "broker_unavailable" for j in failed)
