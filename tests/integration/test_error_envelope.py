"""Every error answers in OpenAI's envelope with the right status, never a bare 500.

Most cases run against the live stack; the ones that need other server settings (API keys,
small limits) run an in-process app against the same database with a broker db no worker
listens on."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.settings import ApiSettings
from jobqueue.settings import QueueSettings
from persistence.settings import DatabaseSettings
from tests import services

pytestmark = pytest.mark.usefixtures("show_logs_on_failure")

PROMPT = {"model": "ensemble", "prompt": "Hi", "max_tokens": 3}


def _error(resp: httpx.Response, status: int, code: str) -> dict:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert error["code"] == code, error
    assert error["message"]
    return error


@contextmanager
def _app(stack, **settings: object) -> Iterator[TestClient]:
    with services.private_redis_db() as idle_broker:
        app = create_app(
            ApiSettings(**settings),
            queue_settings=QueueSettings(broker_url=idle_broker),
            database_settings=DatabaseSettings(database_url=stack.database_url),
        )
        with TestClient(app) as client:
            yield client


def test_400_bad_requests(stack):
    url = stack.base_url + "/v1/chat/completions"
    _error(
        httpx.post(url, json={**PROMPT, "messages": [{"role": "user", "content": "x"}]}),
        400,
        "invalid_request",
    )
    _error(httpx.post(url, json={"model": "ensemble"}), 400, "invalid_request")
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    named = {"type": "function", "function": {"name": "g"}}
    bad_choice = _error(
        httpx.post(url, json={**PROMPT, "tools": tools, "tool_choice": named}), 400, "invalid_value"
    )
    assert bad_choice["param"] == "tool_choice"
    _error(httpx.post(url, json={**PROMPT, "stop": ["a", "b", "c", "d", "e"]}), 400, "invalid_stop")
    tool = {"model": "ensemble", "messages": [{"role": "function", "content": "x"}]}
    assert _error(httpx.post(url, json=tool), 400, "invalid_messages")["param"] == "messages.0.role"
    _error(httpx.get(stack.base_url + "/v1/jobs", params={"status": "nope"}), 400, "invalid_status")


def test_401_when_api_keys_are_set(stack):
    with _app(stack, api_keys="key-one,key-two") as client:
        _error(client.get("/v1/models"), 401, "missing_api_key")
        _error(client.get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401, "invalid_api_key")
        assert client.get("/v1/models", headers={"Authorization": "Bearer key-two"}).status_code == 200
        assert client.get("/status").status_code in (200, 503), "health stays open"


def test_404_unknown_things(stack):
    base = stack.base_url
    _error(httpx.get(base + "/v1/jobs/job-nope"), 404, "job_not_found")
    _error(httpx.get(base + "/v1/ensemble/batch/batch-nope/results"), 404, "batch_not_found")
    _error(httpx.get(base + "/v1/models/nope"), 404, "model_not_found")
    _error(
        httpx.post(base + "/v1/chat/completions", json={**PROMPT, "model": "nope"}), 404, "model_not_found"
    )
    _error(httpx.get(base + "/v1/no-such-endpoint"), 404, "not_found")


def test_409_conflicts(stack):
    with stack.client() as client:
        job = client.post("/v1/chat/completions", json=PROMPT).json()
        _error(client.post(f"/v1/jobs/{job['id']}/cancel"), 409, "job_not_cancellable")
        _error(client.post(f"/v1/jobs/{job['id']}/webhooks/resend"), 409, "no_webhook_event")


def test_413_too_large(stack):
    with _app(stack, max_request_bytes=2000, max_batch_items=3) as client:
        big = {**PROMPT, "prompt": "x" * 5000}
        _error(client.post("/v1/chat/completions", json=big), 413, "request_too_large")
        many = {"examples": [{"input": "x"}] * 4}
        _error(client.post("/v1/ensemble/batch", json=many), 413, "batch_too_large")
        # a body streamed without a Content-Length is counted too
        chunked = client.post(
            "/v1/chat/completions",
            content=iter([json.dumps(big).encode()]),
            headers={"content-type": "application/json"},
        )
        _error(chunked, 413, "request_too_large")


def test_400_invalid_bodies_and_values(stack):
    url = stack.base_url + "/v1/chat/completions"
    error = _error(httpx.post(url, json={**PROMPT, "max_tokens": "many"}), 400, "invalid_request")
    assert error["param"] == "max_tokens"
    _error(httpx.post(url, json={**PROMPT, "unknown_field": 1}), 400, "invalid_request")
    _error(
        httpx.post(url, content=b"{not json", headers={"content-type": "application/json"}),
        400,
        "invalid_request",
    )
    # invalid values of OpenAI's and vLLM's fields: 400 with the field as param, on every endpoint
    bad = {
        "max_tokens": -1,
        "n": 9,
        "temperature": 3,
        "top_k": -2,
        "min_p": 2,
        "repetition_penalty": 0,
        "presence_penalty": 5,
    }
    for endpoint in ("/v1/chat/completions", "/v1/completions", "/v1/loop/completions"):
        for field, value in bad.items():
            error = _error(
                httpx.post(stack.base_url + endpoint, json={**PROMPT, field: value}), 400, "invalid_request"
            )
            assert error["param"] == field, (endpoint, field, error)
    error = _error(httpx.post(url, json={**PROMPT, "logit_bias": {"x": 1}}), 400, "invalid_value")
    assert error["param"] == "logit_bias"
    error = _error(httpx.post(url, json={**PROMPT, "logit_bias": {"5": 101}}), 400, "invalid_value")
    assert error["param"] == "logit_bias"
    error = _error(httpx.post(url, json={**PROMPT, "max_tokens": 4, "min_tokens": 5}), 400, "invalid_value")
    assert error["param"] == "min_tokens"
    _error(httpx.post(url, json={**PROMPT, "webhook_url": "http://10.1.2.3/x"}), 422, "webhook_url_forbidden")


def _queued_jobs(database_url: str) -> int:
    import sqlalchemy

    engine = sqlalchemy.create_engine(database_url)
    try:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    sqlalchemy.text("SELECT count(*) FROM jobs WHERE status = 'queued'")
                ).scalar_one()
            )
    finally:
        engine.dispose()


def test_429_when_the_queue_is_full(stack):
    # the limit counts every queued job of the shared test database: jobs an earlier test left
    # queued (a paused queue) count too, so the limit leaves room for exactly one more
    limit = _queued_jobs(stack.database_url) + 1
    with _app(stack, max_queued_jobs=limit) as client:
        # nothing consumes this broker db: the first job stays queued, the second is refused
        first = client.post("/v1/chat/completions", json={**PROMPT, "timeout": 0.01})
        job_id = _error(first, 504, "timeout")["job_id"]
        try:
            second = client.post("/v1/chat/completions", json=PROMPT)
            assert f"limit {limit}" in _error(second, 429, "queue_full")["message"]
            assert second.headers["retry-after"]
        finally:
            assert client.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"


def test_503_and_504_are_envelopes_too(stack):
    with stack.client() as client:
        resp = client.post("/v1/chat/completions", json={**PROMPT, "max_tokens": 30, "timeout": 0.01})
        error = _error(resp, 504, "timeout")
        assert error["job_id"] and resp.headers["location"].endswith(error["job_id"])
    dead = create_app(
        queue_settings=QueueSettings(broker_url="redis://127.0.0.1:1/0"),
        database_settings=DatabaseSettings(database_url=stack.database_url),
    )
    with TestClient(dead) as client:
        _error(client.post("/v1/chat/completions", json=PROMPT), 503, "broker_unavailable")
        stream = client.post("/v1/chat/completions", json={**PROMPT, "stream": True})
        _error(stream, 503, "broker_unavailable")
        assert stream.headers["retry-after"]


def test_a_failing_job_is_an_error_frame_in_a_stream_and_an_envelope_otherwise(stack):
    broken = [{"path": "/nonexistent/model", "engine": "hf", "device": "cpu", "name": "broken"}]
    with stack.client() as client:
        client.post("/v1/ensemble/config", json={"model_specs": broken})
        try:
            plain = client.post("/v1/chat/completions", json=PROMPT)
            assert _error(plain, 500, "model_load_failed")["job_id"]
            with client.stream("POST", "/v1/chat/completions", json={**PROMPT, "stream": True}) as resp:
                assert resp.status_code == 200
                frames = [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]
            error = json.loads(frames[-1])["error"]
            assert error["code"] == "model_load_failed" and error["job_id"]
        finally:
            client.post("/v1/ensemble/config", json={"model_specs": stack.tiny_specs})


def test_an_empty_prompt_list_is_a_400_not_a_500(stack):
    """schemathesis found it: `prompt: []` reached an index of the empty list."""
    with stack.client() as client:
        resp = client.post("/v1/completions", json={"model": "ensemble", "prompt": [], "max_tokens": 2})
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"].startswith("prompt")
