"""Scale-out by member set with real workers: two `ensemblehub worker --members ...` processes
holding different members of one config version, the API routing by member set
(``ENSEMBLEHUB_ROUTE_BY_MEMBERS=true``).

- each job runs only on the worker holding its members (the job row records the worker), and
  a worker never loads a member it was not started with;
- a job whose member set no worker holds is refused at submission (503 ``no_worker_for_members``)
  and nothing is stored;
- a task delivered to the wrong worker is not run there: it goes on to its member set's queue
  and runs on the right worker;
- SIGKILL of one worker does not stall the other's jobs; its own job waits ``queued`` and
  finishes once a worker with its members is back.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from celery import Celery
from sqlalchemy import create_engine, text

from jobqueue.celery_config import enqueue_job, make_celery
from jobqueue.routing import member_set_queue
from jobqueue.settings import QueueSettings
from tests import services
from tests.faults.infra import report, wait_until
from tests.faults.test_worker_killed import LONG_JOB

LLAMA_QUEUE, GPT2_QUEUE = member_set_queue(["tiny-llama"]), member_set_queue(["tiny-gpt2"])
ROUTING_ENV = {
    "ENSEMBLEHUB_ROUTE_BY_MEMBERS": "true",
    "ENSEMBLEHUB_SWEEP_INTERVAL_S": "1",
    "ENSEMBLEHUB_UNSENT_GRACE_S": "1",
    "ENSEMBLEHUB_HEARTBEAT_INTERVAL_S": "1",
    "ENSEMBLEHUB_DATABASE_RETRY_S": "2",
    "ENSEMBLEHUB_JOB_DEAD_AFTER_S": "4",
    "ENSEMBLEHUB_RATE_LIMIT_REQUESTS": "100000",
}


@dataclass
class RoutedStack:
    base_url: str
    database_url: str
    broker_url: str
    env: dict[str, str]
    log_dir: Path
    api: services.Process
    workers: dict[str, services.Process]  # member name -> its worker

    def start_worker(self, member: str, tag: str) -> services.Process:
        # the documented command, exec'd into Celery (same pid): SIGKILL reaches the worker
        argv = [sys.executable, "-m", "ensemblehub.cli", "worker", "--members", member]
        argv += ["--queues", "models", "--concurrency", "2", "--name", f"{tag}-{os.getpid()}@%h"]
        self.workers[member] = services.Process(argv, self.env, self.log_dir / f"worker-{tag}.log")
        return self.workers[member]

    def status(self) -> dict:
        return httpx.get(self.base_url + "/status", timeout=5).json()

    def job_rows(self, ids: list[str]) -> dict[str, tuple[str, str | None]]:
        engine = create_engine(self.database_url)
        try:
            with engine.connect() as conn:
                rows = conn.execute(
                    text("SELECT id, status, worker FROM jobs WHERE id = ANY(:ids)"), {"ids": ids}
                ).all()
        finally:
            engine.dispose()
        return {r.id: (r.status, r.worker) for r in rows}

    def job_count(self) -> int:
        engine = create_engine(self.database_url)
        try:
            with engine.connect() as conn:
                return int(conn.execute(text("SELECT count(*) FROM jobs")).scalar_one())
        finally:
            engine.dispose()

    def logs(self) -> str:
        procs = [self.api, *self.workers.values()]
        return "\n".join(f"---- {p.log_path.name} ----\n{p.log()[-3000:]}" for p in procs)


@pytest.fixture(scope="module")
def routed(tiny_specs, tmp_path_factory) -> Iterator[RoutedStack]:
    log_dir = tmp_path_factory.mktemp("routing-logs")
    with services.migrated_database() as database_url, services.private_redis_db() as broker_url:
        env = services.service_env(database_url, broker_url, **ROUTING_ENV)
        flags = ["--model_specs", json.dumps(tiny_specs), "--model_selection_method", "all"]
        flags += ["--ensemble_method", "loop", "--max_rounds", "2"]
        api, base = services.start_api(env, log_dir, flags)
        stack = RoutedStack(base, database_url, broker_url, env, log_dir, api, {})
        stack.start_worker("tiny-llama", "llama1")
        stack.start_worker("tiny-gpt2", "gpt2")
        try:
            wait_until(lambda: {LLAMA_QUEUE, GPT2_QUEUE} <= set(_checked(stack)["queues"]), 90, "queues")
            yield stack
        except BaseException:
            print(stack.logs())
            raise
        finally:
            for proc in [api, *stack.workers.values()]:
                proc.stop()


@pytest.fixture(autouse=True)
def _logs_on_failure(request, routed):  # type: ignore[no-untyped-def]
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(routed.logs())


def _checked(stack: RoutedStack) -> dict:
    for proc in stack.workers.values():
        if not proc.alive() and proc.proc.returncode not in (-signal.SIGKILL,):
            raise RuntimeError(f"worker exited:\n{proc.log()}")
    return stack.status()


def _submit(client: httpx.Client, model: str, **extra: object) -> str:
    body = {"model": model, "prompt": "Count:", "max_tokens": 8, "temperature": 0, "background": True}
    resp = client.post("/v1/completions", json={**body, **extra})
    assert resp.status_code == 202, resp.text
    return str(resp.json()["id"])


def _finished(client: httpx.Client, ids: list[str], timeout: float) -> dict[str, dict]:
    def done() -> dict[str, dict] | None:
        jobs = {i: client.get(f"/v1/jobs/{i}").json() for i in ids}
        return jobs if all(j["status"] in ("succeeded", "failed") for j in jobs.values()) else None

    return wait_until(done, timeout, f"jobs {ids} did not finish", interval=0.2)


def _worker_of(proc: services.Process) -> str:
    return f":{proc.proc.pid}"  # the job row's worker is "<host>:<pid>"


def _loaded(stack: RoutedStack, proc: services.Process, member: str) -> set[str]:
    """What the worker holds, once its heartbeat (every second) shows ``member`` loaded."""

    def names() -> set[str] | None:
        (worker,) = [w for w in stack.status()["workers"] if w["pid"] == proc.proc.pid]
        held = {m["name"] for m in worker["loaded_models"]}
        return held if member in held else None

    return wait_until(names, 15, f"{member} loaded on its worker")


def test_jobs_run_only_on_the_worker_holding_their_members(routed) -> None:  # type: ignore[no-untyped-def]
    status = routed.status()
    assert status["routing"] == {"by_members": True}
    llama, gpt2 = routed.workers["tiny-llama"], routed.workers["tiny-gpt2"]
    assert status["queues"][LLAMA_QUEUE] and status["queues"][GPT2_QUEUE], status["queues"]
    assert "models" not in status["queues"], "member workers do not read the default queue"
    members = {w["pid"]: w["members"] for w in status["workers"]}
    assert members[llama.proc.pid] == ["tiny-llama"] and members[gpt2.proc.pid] == ["tiny-gpt2"]

    with httpx.Client(base_url=routed.base_url, timeout=60) as client:
        ids = {m: [_submit(client, m, seed=i) for i in range(4)] for m in ("tiny-llama", "tiny-gpt2")}
        jobs = _finished(client, [*ids["tiny-llama"], *ids["tiny-gpt2"]], 120)
        assert all(j["status"] == "succeeded" for j in jobs.values()), jobs
        rows = routed.job_rows(list(jobs))
        for member, proc in (("tiny-llama", llama), ("tiny-gpt2", gpt2)):
            assert all(rows[i][1].endswith(_worker_of(proc)) for i in ids[member]), (member, rows)
            assert all(jobs[i]["request"]["queue"] == member_set_queue([member]) for i in ids[member])

        # both members at once: no worker holds the pair, so the job is refused, nothing stored
        resp = client.post("/v1/completions", json={"model": "ensemble", "prompt": "Hi", "max_tokens": 4})
        assert resp.status_code == 503, resp.text
        error = resp.json()["error"]
        assert error["code"] == "no_worker_for_members" and "tiny-llama, tiny-gpt2" in error["message"]
        assert resp.headers["Retry-After"] == "30"
        assert routed.job_count() == 8, "the refused request stored no job"

    assert _loaded(routed, llama, "tiny-llama") == {"tiny-llama"}
    assert _loaded(routed, gpt2, "tiny-gpt2") == {"tiny-gpt2"}


def test_a_task_sent_to_the_wrong_worker_runs_on_the_right_one(routed) -> None:  # type: ignore[no-untyped-def]
    llama, gpt2 = routed.workers["tiny-llama"], routed.workers["tiny-gpt2"]
    control = Celery(broker=routed.broker_url).control
    gpt2_node = [f"gpt2-{os.getpid()}@{os.uname().nodename}"]
    assert control.cancel_consumer(GPT2_QUEUE, destination=gpt2_node, reply=True, timeout=10)
    try:
        with httpx.Client(base_url=routed.base_url, timeout=60) as client:
            job_id = _submit(client, "tiny-gpt2")
            # the same task, by mistake, on the queue of the worker that does not hold tiny-gpt2
            enqueue_job(make_celery(QueueSettings(broker_url=routed.broker_url)), job_id, queue=LLAMA_QUEUE)
            wait_until(lambda: "does not hold" in llama.log(), 30, "the llama worker refused the job")
            assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "queued", "not lost, not run"
    finally:
        assert control.add_consumer(GPT2_QUEUE, destination=gpt2_node, reply=True, timeout=10)
    with httpx.Client(base_url=routed.base_url, timeout=60) as client:
        job = _finished(client, [job_id], 60)[job_id]
    assert job["status"] == "succeeded", job
    assert routed.job_rows([job_id])[job_id][1].endswith(_worker_of(gpt2))
    assert _loaded(routed, llama, "tiny-llama") == {"tiny-llama"}, "the wrong worker loaded nothing"


def test_killing_one_worker_does_not_stall_the_other(routed) -> None:  # type: ignore[no-untyped-def]
    victim, survivor = routed.workers["tiny-llama"], routed.workers["tiny-gpt2"]
    with httpx.Client(base_url=routed.base_url, timeout=60) as client:
        # a long job on the victim (hundreds of sampled tokens), killed once it runs
        resp = client.post("/v1/chat/completions", json={**LONG_JOB, "model": "tiny-llama"})
        assert resp.status_code == 202, resp.text
        long_id = resp.json()["id"]
        wait_until(lambda: client.get(f"/v1/jobs/{long_id}").json()["status"] == "running", 60, "start")
        os.kill(victim.proc.pid, signal.SIGKILL)
        victim.proc.wait()
        killed_at = time.monotonic()
        # the victim's queue is still listed for a while (its last heartbeat): accepted, waits
        waiting_id = _submit(client, "tiny-llama")

        with ThreadPoolExecutor(4) as pool:
            ids = list(pool.map(lambda i: _submit(client, "tiny-gpt2", seed=100 + i), range(8)))
        jobs = _finished(client, ids, 60)
        others_s = time.monotonic() - killed_at
        assert all(j["status"] == "succeeded" for j in jobs.values()), jobs
        assert all(w.endswith(_worker_of(survivor)) for _, w in routed.job_rows(ids).values())
        assert client.get(f"/v1/jobs/{waiting_id}").json()["status"] == "queued"

        # the killed worker's job went back to its queue (the sweeper, on the survivor) and
        # waits there; a new worker with its members takes both jobs
        wait_until(lambda: client.get(f"/v1/jobs/{long_id}").json()["status"] == "queued", 60, "requeued")
        assert victim.alive() is False
        replacement = routed.start_worker("tiny-llama", "llama2")
        done = _finished(client, [long_id, waiting_id], 120)
        recovered_s = time.monotonic() - killed_at
    assert done[long_id]["status"] == "succeeded" and done[long_id]["attempts"] == 2, done[long_id]
    assert done[waiting_id]["status"] == "succeeded"
    rows = routed.job_rows([long_id, waiting_id])
    assert all(w.endswith(_worker_of(replacement)) for _, w in rows.values()), rows
    report(
        "routing by member set: one of two member workers killed with kill -9",
        tried="a long tiny-llama job killed mid-run; 8 tiny-gpt2 jobs submitted right after; "
        "a new tiny-llama worker started",
        other_workers_jobs=f"8/8 finished {others_s:.1f} s after the kill, on the surviving worker",
        killed_workers_jobs=f"2/2 finished on the new worker ({recovered_s:.1f} s after the kill)",
        lost=0,
    )
