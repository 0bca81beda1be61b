"""Short timeout: 504 with the job id and a Location, the job goes on, polling finds it, and
a retry with the same Idempotency-Key attaches to the same job."""

from __future__ import annotations

import json
import time
import uuid

import pytest

pytestmark = pytest.mark.usefixtures("show_logs_on_failure")


# hundreds of tokens, past EOS, in as many rounds as they take: the tiny models decode fast, and
# an answer that ended at an early EOS or at the live config's max_rounds (another test may
# have set 2) could beat the 50 ms timeout
LONG = {
    "max_tokens": 300,
    "ignore_eos": True,
    "ensemble_config": {
        "max_rounds": 64,
        "aggregation_params": {"segment_tokens": 8, "segment_boundary": "none"},
    },
}


def test_timeout_then_poll_then_idempotent_retry(stack):
    key = f"test-{uuid.uuid4()}"
    body = {"model": "ensemble", "prompt": "Write a long story.", **LONG, "timeout": 0.05}
    with stack.client() as client:
        first = client.post("/v1/chat/completions", json=body, headers={"Idempotency-Key": key})
        assert first.status_code == 504, first.text
        error = first.json()["error"]
        assert error["code"] == "timeout" and error["type"] == "timeout_error"
        job_id = error["job_id"]
        assert first.headers["location"] == f"/v1/jobs/{job_id}"

        deadline = time.monotonic() + 60
        while (job := client.get(first.headers["location"]).json())["status"] != "succeeded":
            assert job["status"] in ("queued", "running"), job
            assert time.monotonic() < deadline
            time.sleep(0.1)

        retry = client.post(
            "/v1/chat/completions", json={**body, "timeout": 30}, headers={"Idempotency-Key": key}
        )
        assert retry.status_code == 200, retry.text
        answer = retry.json()
        assert answer["id"] == job_id, "the retry attached to the first job"
        assert answer["choices"][0]["text"] == job["result"]["text"]
        assert client.get(f"/v1/jobs/{job_id}").json()["attempts"] == 1, "it ran once"

        reused = client.post(
            "/v1/chat/completions",
            json={**body, "prompt": "Something else"},
            headers={"Idempotency-Key": key},
        )
        assert reused.status_code == 409
        assert reused.json()["error"]["code"] == "idempotency_key_reused"


def test_a_retry_while_the_job_still_runs_waits_for_the_same_job(stack):
    key = f"test-{uuid.uuid4()}"
    body = {"model": "ensemble", "prompt": "Count slowly.", **LONG, "timeout": 0.05}
    with stack.client() as client:
        first = client.post("/v1/chat/completions", json=body, headers={"Idempotency-Key": key})
        assert first.status_code == 504
        second = client.post(
            "/v1/chat/completions", json={**body, "timeout": 60}, headers={"Idempotency-Key": key}
        )
        assert second.status_code == 200
        assert second.json()["id"] == first.json()["error"]["job_id"]


def test_a_stream_retry_with_the_same_key_replays_the_finished_answer(stack):
    key = f"test-{uuid.uuid4()}"
    body = {"model": "ensemble", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 6}
    with stack.client() as client:
        plain = client.post("/v1/chat/completions", json=body, headers={"Idempotency-Key": key}).json()
        with client.stream(
            "POST", "/v1/chat/completions", json={**body, "stream": True}, headers={"Idempotency-Key": key}
        ) as resp:
            lines = [line for line in resp.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert {c["id"] for c in chunks} == {plain["id"]}
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == plain["choices"][0]["message"]["content"]


def test_background_submission_answers_202_and_the_job_can_be_polled(stack):
    import time

    import httpx

    body = {
        "model": "ensemble",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 4,
        "background": True,
    }
    resp = httpx.post(stack.base_url + "/v1/chat/completions", json=body, timeout=30)
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["id"]
    assert resp.headers["Location"] == f"/v1/jobs/{job_id}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job = httpx.get(stack.base_url + resp.headers["Location"]).json()
        if job["status"] in ("succeeded", "failed"):
            break
        time.sleep(0.2)
    assert job["status"] == "succeeded"
    both = httpx.post(stack.base_url + "/v1/chat/completions", json={**body, "stream": True}, timeout=30)
    assert both.status_code == 400
