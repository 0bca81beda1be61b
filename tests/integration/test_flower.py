"""Flower, as ``ensemblehub flower`` starts it: behind basic auth, and a job is found in it
by its id (the Celery task id is the job id; the task's only argument too). Workers start
without task events; Flower's start turns them on (ensemblehub/services.py), so the job run
a second later is seen."""

from __future__ import annotations

import sys
import time

import httpx
import pytest

from tests import services

pytestmark = pytest.mark.usefixtures("show_logs_on_failure")


def test_flower_needs_basic_auth_and_finds_a_job_by_its_id(stack, tmp_path):
    port = services.free_port()
    env = {**stack.env, "ENSEMBLEHUB_FLOWER_BASIC_AUTH": "ops:s3cret"}
    flower = services.Process(
        [sys.executable, "-m", "ensemblehub.cli", "flower", "--port", str(port)], env, tmp_path / "flower.log"
    )
    base = f"http://127.0.0.1:{port}"
    try:
        services.wait_http(base + "/", flower)
        assert httpx.get(base + "/").status_code == 401
        assert httpx.get(base + "/", auth=("ops", "wrong")).status_code == 401
        time.sleep(1)  # Flower subscribes to the worker's events once it is up

        job_id = httpx.post(
            stack.base_url + "/v1/chat/completions",
            json={"model": "ensemble", "prompt": "Hi", "max_tokens": 3},
            timeout=120,
        ).json()["id"]
        deadline = time.monotonic() + 30
        while True:
            resp = httpx.get(f"{base}/api/task/info/{job_id}", auth=("ops", "s3cret"))
            if resp.status_code == 200 and resp.json().get("state") == "SUCCESS":
                break
            assert time.monotonic() < deadline, (resp.status_code, resp.text, flower.log())
            time.sleep(0.3)
        task = resp.json()
        assert task["name"] == "ensemblehub.run_job"
        assert task["args"] == f"['{job_id}']"
        assert httpx.get(f"{base}/task/{job_id}", auth=("ops", "s3cret")).status_code == 200
    finally:
        flower.stop()
