"""kill -9 the worker in the middle of a job, start a new one: the job finishes, one result.

The job's heartbeat stops with its worker; the sweeper (beat, every second here) sees a
running job without a heartbeat for ``job_dead_after_s`` (4 s here), puts it back in the
queue and sends it again; the new worker claims it (attempt 2). A task delivered once more
after that is skipped by the conditional claim, so exactly one result and one webhook event
exist."""

from __future__ import annotations

import os
import signal
import time

import pytest

from jobqueue.celery_config import enqueue_job, make_celery
from jobqueue.settings import QueueSettings
from tests.faults.infra import report, wait_until
from tests.webhook_receiver import webhook_receiver

pytestmark = pytest.mark.usefixtures("fault_logs_on_failure")

# four sampled answers (seeds 1-4) of hundreds of tokens each on the tiny models: several
# seconds of work even with the models loaded
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


def test_a_job_whose_worker_is_killed_finishes_on_the_next_worker_with_one_result(fault_stack):
    with webhook_receiver() as receiver, fault_stack.client() as client:
        resp = client.post("/v1/chat/completions", json={**LONG_JOB, "webhook_url": receiver.url})
        assert resp.status_code == 202, resp.text
        job_id = resp.json()["id"]
        wait_until(
            lambda: client.get(f"/v1/jobs/{job_id}").json()["status"] == "running",
            60,
            "job start",
            interval=0.05,
        )
        time.sleep(0.3)  # into the job
        victim = fault_stack.models_worker
        os.kill(victim.proc.pid, signal.SIGKILL)
        victim.proc.wait()
        killed_at = time.monotonic()
        assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "running", "killed mid-job"
        fault_stack.restart_models_worker()

        job = wait_until(
            lambda: (j := client.get(f"/v1/jobs/{job_id}").json())["status"] in ("succeeded", "failed") and j,
            120,
            "the job did not finish after its worker was killed",
        )
        recovered_s = time.monotonic() - killed_at
        assert job["status"] == "succeeded", job["error"]
        assert job["attempts"] == 2, "run once more after the kill"
        assert len(job["result"]["choices"]) == 4 and all(c["text"] for c in job["result"]["choices"])

        # the same task delivered once more (as Redis would after the visibility timeout)
        enqueue_job(make_celery(QueueSettings(broker_url=fault_stack.broker_url)), job_id)
        time.sleep(3)
        again = client.get(f"/v1/jobs/{job_id}").json()
        assert (again["finished_at"], again["result"], again["attempts"]) == (
            job["finished_at"],
            job["result"],
            2,
        ), "a duplicate delivery must not run or store the job again"

        receiver.wait_for(1, timeout=30)
        time.sleep(1)  # a second event, if there were one, would have arrived by now
        events = [r.headers["webhook-id"] for r in receiver.received]
        deliveries = client.get(f"/v1/jobs/{job_id}/webhooks").json()["data"]
    assert len(events) == 1 and len({d["event_id"] for d in deliveries}) == 1, "one result, one event"
    report(
        "worker killed with kill -9 in the middle of a job",
        tried="1 job killed 0.3 s after it started; a new worker started (loads the models); "
        "the task delivered once more afterwards",
        recovered_in=f"{recovered_s:.1f} s after the kill (attempts: {job['attempts']})",
        results_stored=1,
        webhook_events=len(events),
        lost=0,
    )
