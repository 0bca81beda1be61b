"""Recovery with only the processes the README lists: ``ensemblehub worker`` and the API, no
Celery beat. A worker is killed with SIGKILL mid-job; the next worker holds the sweep lease
(its own schedule), re-queues the job and runs it: attempt 2, one result."""

from __future__ import annotations

import json
import os
import signal
import time

import httpx

from tests import services
from tests.faults.infra import report, wait_until

ENV = {
    "ENSEMBLEHUB_SWEEP_INTERVAL_S": "1",
    "ENSEMBLEHUB_UNSENT_GRACE_S": "1",
    "ENSEMBLEHUB_JOB_DEAD_AFTER_S": "3",
    "ENSEMBLEHUB_DATABASE_RETRY_S": "2",
    "ENSEMBLEHUB_HEARTBEAT_INTERVAL_S": "1",
}
LONG_JOB = {
    "model": "ensemble",
    "prompt": "Count as far as you can.",
    "max_tokens": 4000,
    "max_rounds": 64,
    "n": 4,
    "temperature": 2.0,
    "seed": 1,
    "ensemble_config": {"max_repeat": 100},
    "background": True,
}


def test_a_killed_workers_job_finishes_on_attempt_2_without_beat(tiny_specs, tmp_path):
    with services.migrated_database() as db_url, services.private_redis_db() as broker:
        env = services.service_env(db_url, broker, **ENV)
        api, base = services.start_api(
            env,
            tmp_path,
            [
                "--model_specs",
                json.dumps(tiny_specs),
                "--model_selection_method",
                "all",
                "--ensemble_method",
                "loop",
            ],
        )
        first = services.start_worker(env, tmp_path, name="first")
        second = None
        try:
            services.wait_for_worker(base, first, timeout=90)
            with httpx.Client(base_url=base, timeout=60) as client:
                job_id = client.post("/v1/chat/completions", json=LONG_JOB).json()["id"]
                wait_until(
                    lambda: client.get(f"/v1/jobs/{job_id}").json()["status"] == "running", 90, "start", 0.05
                )
                time.sleep(0.3)
                os.kill(first.proc.pid, signal.SIGKILL)
                first.proc.wait()
                killed_at = time.monotonic()
                second = services.start_worker(env, tmp_path, name="second")
                job = wait_until(
                    lambda: (
                        (j := client.get(f"/v1/jobs/{job_id}").json())["status"] in ("succeeded", "failed")
                        and j
                    ),
                    180,
                    "the job to finish on the second worker",
                )
            recovered_s = time.monotonic() - killed_at
            assert job["status"] == "succeeded" and job["attempts"] == 2, job
            report(
                "SIGKILL with only `ensemblehub worker` + API (no beat)",
                recovered_s=round(recovered_s, 1),
                attempts=job["attempts"],
            )
        finally:
            api.stop()
            first.stop()
            if second is not None:
                second.stop()
