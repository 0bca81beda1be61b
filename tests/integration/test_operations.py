"""The operations surface clients and load balancers use: ``GET /health`` (503 while Postgres or
Redis is down), ``GET /v1/models/{id}``, ``x-request-id`` on every answer and the job id header
on every generating answer."""

from __future__ import annotations

import httpx
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from jobqueue.settings import QueueSettings
from persistence.settings import DatabaseSettings

pytestmark = pytest.mark.usefixtures("show_logs_on_failure")

DEAD_REDIS = "redis://127.0.0.1:1/3"
DEAD_PG = "postgresql+psycopg://postgres@127.0.0.1:1/nothing"
PROMPT = {"model": "tiny-llama", "prompt": "Hi", "max_tokens": 3, "temperature": 0}


def test_health_is_200_on_the_live_stack(stack):
    resp = httpx.get(stack.base_url + "/health")
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok", "checks": {"database": True, "broker": True}}


def test_health_is_503_while_redis_or_postgres_is_down(database_url, broker_url):
    cases = [
        (database_url, DEAD_REDIS, {"database": True, "broker": False}),
        (DEAD_PG, broker_url, {"database": False, "broker": True}),
    ]
    for db_url, redis_url, checks in cases:
        app = create_app(
            queue_settings=QueueSettings(broker_url=redis_url),
            database_settings=DatabaseSettings(database_url=db_url, connect_timeout_s=1),
        )
        with TestClient(app) as client:
            resp = client.get("/health")
        assert resp.status_code == 503
        assert resp.headers["Retry-After"]
        assert resp.json() == {"status": "unavailable", "checks": checks}


def test_retrieve_a_model(stack):
    listed = httpx.get(stack.base_url + "/v1/models").json()["data"]
    for model in listed:
        resp = httpx.get(f"{stack.base_url}/v1/models/{model['id']}")
        assert resp.status_code == 200 and resp.json() == model
    missing = httpx.get(stack.base_url + "/v1/models/nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_every_answer_carries_a_request_id_and_echoes_the_clients(stack):
    own = httpx.get(stack.base_url + "/health", headers={"x-request-id": "trace-123"})
    assert own.headers["x-request-id"] == "trace-123"
    fresh = [httpx.get(stack.base_url + "/v1/models").headers["x-request-id"] for _ in range(2)]
    assert fresh[0] != fresh[1] and len(fresh[0]) == 32
    error = httpx.post(stack.base_url + "/v1/chat/completions", json={"model": "ensemble"})
    assert error.status_code == 400 and error.headers["x-request-id"]
    # something unfit for a header or a log line is replaced, not echoed
    odd = httpx.get(stack.base_url + "/health", headers={"x-request-id": "a b\tc"})
    assert odd.headers["x-request-id"] != "a b\tc"


def test_generating_answers_name_their_job_in_a_header(stack):
    for endpoint in ("/v1/chat/completions", "/v1/completions"):
        resp = httpx.post(stack.base_url + endpoint, json=PROMPT, timeout=120)
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-job-id"] == resp.json()["id"]
        job = httpx.get(f"{stack.base_url}/v1/jobs/{resp.headers['x-job-id']}").json()
        assert job["status"] == "succeeded"
    inference = httpx.post(
        stack.base_url + "/v1/ensemble/inference", json={"input": "Hi", "max_tokens": 3}, timeout=120
    )
    assert inference.headers["x-job-id"] == inference.json()["id"]
    background = httpx.post(stack.base_url + "/v1/chat/completions", json={**PROMPT, "background": True})
    assert background.status_code == 202 and background.headers["x-job-id"] == background.json()["id"]
