"""A stream of submissions of every kind, and the check that each accepted one finished.

Kinds, in turn: a synchronous completion (with an Idempotency-Key), a ``background`` job
(202), a two-item batch (202) and a stream (SSE). "Accepted" means the client was told the
work exists: a 2xx, or a 504 whose envelope names the job that goes on.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx

KINDS = ("sync", "background", "batch", "stream")
SMALL = {"model": "ensemble", "max_tokens": 4, "max_rounds": 1}


@dataclass
class Outcome:
    kind: str
    status: int | None  # None: the API could not be reached at all
    code: str | None = None
    job_ids: list[str] = field(default_factory=list)
    batch_id: str | None = None
    idempotency_key: str | None = None
    stream_frames_500: int = 0
    at: float = 0.0

    @property
    def accepted(self) -> bool:
        return self.status is not None and (
            200 <= self.status < 300 or (self.status == 504 and bool(self.job_ids))
        )


def submit(client: httpx.Client, index: int) -> Outcome:
    kind = KINDS[index % len(KINDS)]
    started = time.monotonic()
    try:
        outcome = _submit(client, kind, index)
    except httpx.HTTPError:
        outcome = Outcome(kind, None)
    outcome.at = started
    return outcome


def _submit(client: httpx.Client, kind: str, index: int) -> Outcome:
    prompt = f"request {index}"
    if kind == "batch":
        resp = client.post(
            "/v1/ensemble/batch",
            json={"examples": [{"input": prompt}, {"input": prompt + "b"}], "max_tokens": 4},
        )
        return _outcome(kind, resp, batch=True)
    if kind == "background":
        resp = client.post("/v1/chat/completions", json={**SMALL, "prompt": prompt, "background": True})
        return _outcome(kind, resp)
    if kind == "stream":
        with client.stream(
            "POST", "/v1/chat/completions", json={**SMALL, "prompt": prompt, "stream": True}
        ) as resp:
            if resp.status_code != 200:
                resp.read()
                return _outcome(kind, resp)
            frames = [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]
        outcome = Outcome(kind, 200, job_ids=[resp.headers["x-job-id"]])
        outcome.stream_frames_500 = sum(
            1
            for f in frames
            if f != "[DONE]" and json.loads(f).get("error", {}).get("type") == "server_error"
        )
        if frames[-1] != "[DONE]":
            outcome.code = json.loads(frames[-1])["error"]["code"]
        return outcome
    key = f"load-{uuid.uuid4().hex}"
    resp = client.post(
        "/v1/chat/completions",
        json={**SMALL, "prompt": prompt, "timeout": 60},
        headers={"Idempotency-Key": key},
    )
    outcome = _outcome(kind, resp)
    outcome.idempotency_key = key
    return outcome


def _outcome(kind: str, resp: httpx.Response, *, batch: bool = False) -> Outcome:
    try:
        body = resp.json()
    except ValueError:
        body = {}
    error = body.get("error") or {}
    outcome = Outcome(kind, resp.status_code, code=error.get("code"))
    if resp.status_code < 300:
        if batch:
            outcome.batch_id = body["id"]
        else:
            outcome.job_ids = [body["id"]]
    elif error.get("job_id"):
        outcome.job_ids = [error["job_id"]]
    return outcome


def run(
    client_factory: Callable[[], httpx.Client],
    count: int,
    *,
    threads: int = 4,
    pace_s: float = 0.06,
    fault_after: int,
    fault: Callable[[], None],
) -> tuple[list[Outcome], dict[str, float]]:
    """Send ``count`` submissions from ``threads`` clients, submission i not before
    ``i * pace_s`` (a steady stream, so it runs before, during and after the fault); once
    ``fault_after`` have been answered, run ``fault`` (in this thread) while they go on."""
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    answered = threading.Event()
    clients = [client_factory() for _ in range(threads)]

    def worker(index: int) -> None:
        time.sleep(max(0.0, times["start"] + index * pace_s - time.monotonic()))
        result = submit(clients[index % threads], index)
        with lock:
            outcomes.append(result)
            if len(outcomes) >= fault_after:
                answered.set()

    times: dict[str, float] = {"start": time.monotonic()}
    with ThreadPoolExecutor(threads) as pool:
        futures = [pool.submit(worker, i) for i in range(count)]
        answered.wait(timeout=300)
        times["fault_start"] = time.monotonic()
        fault()
        times["fault_end"] = time.monotonic()
        for future in futures:
            future.result()
    times["end"] = time.monotonic()
    for client in clients:
        client.close()
    return outcomes, times


def wait_all_final(client: httpx.Client, outcomes: list[Outcome], timeout: float = 120) -> dict[str, Counter]:
    """Poll every accepted job and batch item until it is final; returns their final states."""
    job_ids = {j for o in outcomes if o.accepted for j in o.job_ids}
    batch_ids = {o.batch_id for o in outcomes if o.accepted and o.batch_id}
    deadline = time.monotonic() + timeout
    final: dict[str, str] = {}
    while True:
        for job_id in sorted(job_ids - set(final)):
            status = client.get(f"/v1/jobs/{job_id}").json()["status"]
            if status in ("succeeded", "failed", "cancelled"):
                final[job_id] = status
        open_batches = [
            b
            for b in batch_ids
            if client.get(f"/v1/ensemble/batch/{b}").json()["status"]
            not in ("completed", "failed", "cancelled")
        ]
        if len(final) == len(job_ids) and not open_batches:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(job_ids) - len(final)} jobs and {len(open_batches)} batches not final")
        time.sleep(0.5)
    items: Counter = Counter()
    for batch_id in batch_ids:
        for item in client.get(f"/v1/ensemble/batch/{batch_id}/results").json()["data"]:
            items[item["status"]] += 1
    return {"jobs": Counter(final.values()), "batch_items": items}


def statuses(outcomes: list[Outcome]) -> str:
    counts = Counter(o.status for o in outcomes)
    return ", ".join(
        f"{status or 'no answer'}: {n}" for status, n in sorted(counts.items(), key=lambda x: x[0] or 0)
    )
