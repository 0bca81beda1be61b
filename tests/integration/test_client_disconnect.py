"""A synchronous request whose client hangs up: its job is cancelled (vLLM aborts a request
whose client left), unless it carries an Idempotency-Key, which a retry may come back with."""

from __future__ import annotations

import json
import socket
import time
import uuid
from urllib.parse import urlsplit

import pytest

pytestmark = pytest.mark.usefixtures("show_logs_on_failure")


def _long_body(marker: str) -> dict:
    # ~1500 tokens in 32-token rounds: seconds of work on the tiny models
    return {
        "model": "ensemble",
        "messages": [{"role": "user", "content": f"Count on and on ({marker})."}],
        "max_tokens": 1500,
        "ignore_eos": True,
        "ensemble_config": {
            "max_rounds": 64,
            "aggregation_params": {"segment_tokens": 32, "segment_boundary": "none"},
        },
    }


def _send_and_keep_open(base_url: str, body: dict, headers: dict[str, str]) -> socket.socket:
    """POST on a raw connection and leave it waiting for the answer (httpx cannot hang up
    mid-wait on purpose)."""
    url = urlsplit(base_url)
    sock = socket.create_connection((url.hostname, url.port), timeout=10)
    data = json.dumps(body).encode()
    head = [
        "POST /v1/chat/completions HTTP/1.1",
        f"Host: {url.hostname}:{url.port}",
        "Content-Type: application/json",
        f"Content-Length: {len(data)}",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + data)
    return sock


def _running_job(client, marker: str) -> dict:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for job in client.get("/v1/jobs", params={"status": "running"}).json()["data"]:
            if marker in json.dumps(job.get("request")):
                return job
        time.sleep(0.05)
    raise AssertionError(f"no running job for {marker}")


def _final(client, job_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while (job := client.get(f"/v1/jobs/{job_id}").json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    return job


def test_a_client_that_hangs_up_has_its_job_cancelled(stack):
    marker = f"gone-{uuid.uuid4().hex[:8]}"
    with stack.client() as client:
        sock = _send_and_keep_open(stack.base_url, _long_body(marker), {})
        job = _running_job(client, marker)
        sock.close()
        left_at = time.monotonic()
        final = _final(client, job["id"], timeout=15)
        assert final["status"] == "cancelled", final
        assert time.monotonic() - left_at < 5, "cancelled within a few decode steps of the hang-up"


def test_with_an_idempotency_key_the_job_runs_on_for_a_retry(stack):
    marker = f"kept-{uuid.uuid4().hex[:8]}"
    key = f"test-{uuid.uuid4()}"
    with stack.client() as client:
        sock = _send_and_keep_open(stack.base_url, _long_body(marker), {"Idempotency-Key": key})
        job = _running_job(client, marker)
        sock.close()
        retry = client.post("/v1/chat/completions", json=_long_body(marker), headers={"Idempotency-Key": key})
        assert retry.status_code == 200, retry.text
        assert retry.json()["id"] == job["id"]
        assert _final(client, job["id"])["status"] == "succeeded"
