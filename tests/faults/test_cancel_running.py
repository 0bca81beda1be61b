"""Running jobs obey cancels and deadlines, on the real bundled SmolLM2 through the real stack
(API over HTTP, one ``ensemblehub worker``): a cancel stops a 400-token job within 2 s and
keeps its partial answer; a deadline ends a job with ``deadline_exceeded``; a client that
drops its stream cancels the job."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from tests import services
from tests.faults.infra import report, wait_until

pytestmark = pytest.mark.slow  # the real bundled SmolLM2

SMOLLM2 = [{"path": "bundled:smollm2", "engine": "hf", "device": "cpu", "name": "smollm2"}]
ENV = {"ENSEMBLEHUB_MAX_JOB_DEADLINE_S": "120", "ENSEMBLEHUB_JOB_DEADLINE_S": "60"}
# 400 tokens that really run: EOS is never chosen
LONG = {
    "model": "ensemble",
    "messages": [{"role": "user", "content": "Tell me a long story about a lighthouse keeper."}],
    "max_tokens": 400,
    "ignore_eos": True,
    "temperature": 0,
}


@pytest.fixture(scope="module")
def smollm2_stack(tmp_path_factory) -> Iterator[str]:
    log_dir = tmp_path_factory.mktemp("cancel-logs")
    with services.migrated_database() as db_url, services.private_redis_db() as broker:
        env = services.service_env(db_url, broker, **ENV)
        flags = ["--model_specs", json.dumps(SMOLLM2), "--model_selection_method", "all"]
        api, base = services.start_api(env, log_dir, [*flags, "--ensemble_method", "loop"])
        worker = services.start_worker(env, log_dir, name="smollm2")
        try:
            services.wait_for_worker(base, worker, timeout=120)
            # the first job loads the model; the measured ones must not wait for that
            warm = httpx.post(base + "/v1/chat/completions", json={**LONG, "max_tokens": 2}, timeout=180)
            assert warm.status_code == 200, warm.text
            yield base
        except BaseException:
            print(worker.log()[-4000:], api.log()[-2000:])
            raise
        finally:
            worker.stop()
            api.stop()


def _running_with_text(client: httpx.Client, job_id: str) -> None:
    """Wait until the job runs and has generated for a moment (its first segments)."""
    wait_until(lambda: client.get(f"/v1/jobs/{job_id}").json()["status"] == "running", 60, "start", 0.05)
    time.sleep(1.0)


def test_cancel_stops_a_running_400_token_job_within_2_s(smollm2_stack: str) -> None:
    with httpx.Client(base_url=smollm2_stack, timeout=60) as client:
        job_id = client.post("/v1/chat/completions", json={**LONG, "background": True}).json()["id"]
        _running_with_text(client, job_id)
        asked = time.monotonic()
        answer = client.post(f"/v1/jobs/{job_id}/cancel")
        answered_s = time.monotonic() - asked
        assert answer.status_code == 200, answer.text
        job = answer.json()
        # the answer waits for the worker's partial result (it stops within a decode step)
        assert job["status"] == "cancelled" and job["result"] is not None, job
        assert answered_s < 2.0
        text, usage = job["result"]["text"], job["usage"]
        assert text and 0 < usage["completion_tokens"] < 400
        assert job["result"]["stop_reason"] == "cancelled"
        # nothing changes afterwards: the worker stopped and wrote once
        time.sleep(1.5)
        again = client.get(f"/v1/jobs/{job_id}").json()
        assert again["usage"] == usage and again["status"] == "cancelled"
        # a second cancel is harmless; cancelling a finished job is a 409
        assert client.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"
        done = client.post("/v1/chat/completions", json={**LONG, "max_tokens": 2}).json()["id"]
        assert client.post(f"/v1/jobs/{done}/cancel").status_code == 409
    report(
        "cancel of a running 400-token SmolLM2 job (CPU)",
        cancel_answered_s=round(answered_s, 2),
        tokens_kept=usage["completion_tokens"],
    )


def test_a_deadline_ends_a_job_with_its_own_code(smollm2_stack: str) -> None:
    with httpx.Client(base_url=smollm2_stack, timeout=60) as client:
        started = time.monotonic()
        sync = client.post("/v1/chat/completions", json={**LONG, "deadline_s": 1.5})
        took_s = time.monotonic() - started
        assert sync.status_code == 504, sync.text
        error = sync.json()["error"]
        assert error["code"] == "deadline_exceeded"
        job = client.get(f"/v1/jobs/{error['job_id']}").json()
        assert job["status"] == "failed" and job["error"]["code"] == "deadline_exceeded"
        assert job["result"]["text"] and 0 < job["usage"]["completion_tokens"] < 400
        assert job["result"]["stop_reason"] == "deadline_exceeded"
        run_s = job["timings"]["run_ms"] / 1000
        assert 1.5 <= run_s < 3.5, job["timings"]
        # the cap is the admin's; past it the request is refused, naming the param
        refused = client.post("/v1/chat/completions", json={**LONG, "deadline_s": 121})
        assert refused.status_code == 400
        assert refused.json()["error"]["param"] == "deadline_s"
        assert refused.json()["error"]["code"] == "deadline_too_large"
        inference = client.post("/v1/ensemble/inference", json={"input": "Hi", "deadline_s": 121})
        assert (inference.status_code, inference.json()["error"]["param"]) == (400, "deadline_s")
        # the 504 tells OpenAI's SDKs not to retry: the retry would run out of time again
        assert sync.headers["X-Should-Retry"] == "false"
    report(
        "deadline_s=1.5 on a 400-token SmolLM2 job",
        job_ran_s=round(run_s, 2),
        answered_s=round(took_s, 2),
        tokens_kept=job["usage"]["completion_tokens"],
    )


def test_a_dropped_stream_cancels_its_job(smollm2_stack: str) -> None:
    with httpx.Client(base_url=smollm2_stack, timeout=60) as client:
        with client.stream("POST", "/v1/chat/completions", json={**LONG, "stream": True}) as stream:
            job_id = stream.headers["X-Job-Id"]
            chunks = 0
            for line in stream.iter_lines():
                if line.startswith("data: ") and '"content":"' in line and '"content":""' not in line:
                    chunks += 1
                    if chunks == 2:
                        break
            dropped = time.monotonic()
        # leaving the block closes the connection mid-stream
        job = wait_until(
            lambda: (
                (j := client.get(f"/v1/jobs/{job_id}").json())["status"] == "cancelled"
                and j["result"] is not None
                and j
            ),
            10,
            "the dropped stream's job to stop",
            0.05,
        )
        stopped_s = time.monotonic() - dropped
        assert stopped_s < 2.0
        assert job["result"]["text"] and 0 < job["usage"]["completion_tokens"] < 400
    report("a client drops its stream mid-answer", job_stopped_s=round(stopped_s, 2))


def test_batch_cancel_stops_its_running_items(smollm2_stack: str) -> None:
    body = {
        "examples": [{"input": f"Tell story number {i} about a lighthouse."} for i in range(3)],
        "max_tokens": 400,
        "ensemble_config": {"aggregation_params": {"ignore_eos": True}},
    }
    with httpx.Client(base_url=smollm2_stack, timeout=60) as client:
        resp = client.post("/v1/ensemble/batch", json=body)
        assert resp.status_code in (200, 202), resp.text
        batch_id = resp.json()["id"]

        def running() -> list[dict]:
            jobs = client.get("/v1/jobs", params={"batch_id": batch_id, "status": "running"}).json()
            return jobs["data"]

        item = wait_until(running, 60, "a running batch item", 0.05)[0]
        time.sleep(1.0)
        asked = time.monotonic()
        assert client.post(f"/v1/ensemble/batch/{batch_id}/cancel").json()["status"] == "cancelled"
        job = wait_until(
            lambda: (j := client.get(f"/v1/jobs/{item['id']}").json())["result"] is not None and j,
            10,
            "the running item's partial answer",
            0.05,
        )
        stopped_s = time.monotonic() - asked
        assert job["status"] == "cancelled" and stopped_s < 2.0
        assert job["result"]["text"] and 0 < job["usage"]["completion_tokens"] < 400
    report("batch cancel with a running 400-token item", item_stopped_s=round(stopped_s, 2))


def test_a_stream_that_times_out_leaves_its_job_running(smollm2_stack: str) -> None:
    # the 504 frame says "it goes on: poll": a client that hangs up after it cancels nothing
    with httpx.Client(base_url=smollm2_stack, timeout=60) as client:
        body = {**LONG, "stream": True, "timeout": 1.0}
        with client.stream("POST", "/v1/chat/completions", json=body) as stream:
            job_id = stream.headers["X-Job-Id"]
            for line in stream.iter_lines():
                if line.startswith('data: {"error"'):
                    assert json.loads(line[6:])["error"]["code"] == "timeout"
                    break
        time.sleep(1.0)
        assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "running"
        assert client.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"
