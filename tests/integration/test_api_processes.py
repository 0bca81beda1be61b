"""``--workers N``: several API processes on one port, each a full API."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import psutil

from tests import services

SUBMISSION = {
    "model": "ensemble",
    "messages": [{"role": "user", "content": "What is 2+2?"}],
    "max_tokens": 2,
    "background": True,
}


def test_two_api_processes_share_the_port_and_both_answer(stack, tmp_path):
    port = services.free_port()
    api = services.Process(
        [sys.executable, "-m", "ensemblehub.api", "--port", str(port), "--workers", "2"],
        stack.env,
        tmp_path / "api.log",
    )
    base = f"http://127.0.0.1:{port}"
    try:
        services.wait_http(base + "/", api)
        children = {p.pid for p in psutil.Process(api.proc.pid).children(recursive=True)}
        answered: set[int] = set()
        jobs: list[str] = []
        deadline = time.monotonic() + 30
        while len(answered) < 2 and time.monotonic() < deadline:
            # a new connection each time: the processes take turns accepting them
            with httpx.Client(base_url=base, timeout=10) as client:
                answered.add(client.get("/status").json()["api"]["pid"])
                resp = client.post("/v1/chat/completions", json=SUBMISSION)
                assert resp.status_code == 202, resp.text
                jobs.append(resp.json()["id"])
        assert len(answered) == 2, f"only {answered} answered:\n{api.log()}"
        assert answered <= children, (answered, children)
        # the jobs either process accepted run on the stack's worker
        with httpx.Client(base_url=base, timeout=10) as client:
            for job_id in jobs[-2:]:
                while client.get(f"/v1/jobs/{job_id}").json()["status"] in ("queued", "running"):
                    assert time.monotonic() < deadline + 60, f"job {job_id} did not finish"
                    time.sleep(0.1)
                assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded"
    finally:
        api.stop()
    # the API processes are gone with their parent; multiprocessing's resource tracker (also a
    # child) exits on its own a moment later, when the last pipe to it closes
    deadline = time.monotonic() + 10
    while alive := [pid for pid in children if _running(pid)]:
        assert time.monotonic() < deadline, f"children still running after the API stopped: {alive}"
        time.sleep(0.1)


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_several_processes_are_refused_in_the_embedded_mode(tmp_path):
    env = services.service_env(f"sqlite:///{tmp_path / 'embedded.sqlite'}", "memory://")
    for argv in (
        [sys.executable, "-m", "ensemblehub.api", "--workers", "2"],
        [sys.executable, "-m", "ensemblehub.cli", "api", "--workers", "2"],
    ):
        done = subprocess.run(argv, env=env, cwd=services.ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, done.stderr
        assert "--workers 2" in done.stderr and "embedded mode" in done.stderr, done.stderr
