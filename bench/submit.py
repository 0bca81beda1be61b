"""Accepted submissions per second, and the time to accept a 10,000-item batch.

    python bench/submit.py [--submissions 600] [--concurrency 16] [--batch-items 10000]
                           [--api-workers 2] [--client raw|httpx] [--worker-nice 0]

Submissions are `POST /v1/chat/completions` with `background: true` (answered 202 once the job
is committed and sent to the broker), from concurrent clients over keep-alive connections.
The worker is running meanwhile (as in production), on the same 2 cores, at the API's CPU
priority (``--worker-nice 10``: below it, as ``ensemblehub up`` runs its model worker); after the measure
the bench waits until no job is queued or running and prints the jobs stored by status (every
accepted job must be stored and reach a final state).

``--api-workers N`` serves from N API processes (``--workers N``). ``--client raw`` (default)
is a load generator in the manner of wrk: one asyncio loop writing requests and reading
answers on keep-alive sockets, ~0.1 ms of CPU per request; ``httpx`` is one thread and one
``httpx.Client`` per connection, which costs ~1 ms of CPU per request, taken from the same
2 cores the server runs on.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stack import print_table, running_stack, summary  # noqa: E402
from persistence.models import FINAL_JOB_STATUSES  # noqa: E402
from tests.tiny_models import build_tiny_model  # noqa: E402

BODY = {
    "model": "ensemble",
    "messages": [{"role": "user", "content": "What is 2+2?"}],
    "max_tokens": 4,
    "background": True,
}


def submit_rate(base_url: str, total: int, concurrency: int) -> tuple[float, list[float], int]:
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    counter = iter(range(total))

    def client_loop() -> None:
        nonlocal errors
        with httpx.Client(base_url=base_url, timeout=60) as client:
            while True:
                with lock:
                    if next(counter, None) is None:
                        return
                t = time.perf_counter()
                resp = client.post("/v1/chat/completions", json=BODY)
                elapsed = (time.perf_counter() - t) * 1000
                with lock:
                    latencies.append(elapsed)
                    if resp.status_code != 202:
                        errors += 1

    threads = [threading.Thread(target=client_loop) for _ in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    return total / wall, latencies, errors


def raw_submit_rate(base_url: str, total: int, concurrency: int) -> tuple[float, list[float], int]:
    """The same submissions as ``submit_rate`` from a light client: HTTP/1.1 written and read
    by hand on ``concurrency`` keep-alive connections of one asyncio loop."""
    host, port = base_url.removeprefix("http://").split(":")
    payload = json.dumps(BODY).encode()
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload
    latencies: list[float] = []
    errors = 0
    left = total

    async def connection() -> None:
        nonlocal errors, left
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while left > 0:
                left -= 1
                t = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                latencies.append((time.perf_counter() - t) * 1000)
                if not head.startswith(b"HTTP/1.1 202"):
                    errors += 1
        finally:
            writer.close()

    async def run() -> float:
        started = time.perf_counter()
        await asyncio.gather(*(connection() for _ in range(concurrency)))
        return time.perf_counter() - started

    wall = asyncio.run(run())
    return total / wall, latencies, errors


def wait_for_api_processes(base_url: str, processes: int, timeout_s: float = 60) -> None:
    """Until each of the API processes has answered (each takes a few seconds to start)."""
    seen: set[int] = set()
    deadline = time.monotonic() + timeout_s
    while len(seen) < processes and time.monotonic() < deadline:
        with httpx.Client(base_url=base_url, timeout=10) as client:  # a new connection each time
            seen.add(client.get("/status").json()["api"]["pid"])
        time.sleep(0.05)
    if len(seen) < processes:
        raise TimeoutError(f"only {len(seen)} of {processes} API processes answered")


def wait_until_final(database_url: str, timeout_s: float) -> tuple[dict[str, int], float]:
    """Jobs by status once none is queued or running (or at ``timeout_s``): every accepted job
    must be stored and reach a final state. Returns the counts and the seconds waited."""
    from sqlalchemy import func, select

    from persistence.db import Database
    from persistence.models import Job

    db = Database(database_url)
    started = time.monotonic()
    try:
        while True:
            with db.transaction() as session:
                counts = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
            pending = sum(n for status, n in counts.items() if status not in FINAL_JOB_STATUSES)
            if pending == 0 or time.monotonic() - started > timeout_s:
                return counts, time.monotonic() - started
            time.sleep(0.5)
    finally:
        db.dispose()


def batch_accept(base_url: str, items: int) -> tuple[float, int]:
    body = {"examples": [{"input": f"What is {i}+1?"} for i in range(items)], "max_tokens": 4}
    t = time.perf_counter()
    resp = httpx.post(base_url + "/v1/ensemble/batch", json=body, timeout=120)
    return time.perf_counter() - t, resp.status_code


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--submissions", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--batch-items", type=int, default=10_000)
    parser.add_argument("--api-workers", type=int, default=1, help="API processes (--workers)")
    parser.add_argument("--client", choices=["raw", "httpx"], default="raw")
    parser.add_argument(
        "--worker-nice",
        type=int,
        default=0,
        help="the worker's nice value (0: the API's priority; 10: as `ensemblehub up` runs it)",
    )
    parser.add_argument(
        "--drain-timeout", type=float, default=180, help="seconds to wait for every job to end"
    )
    args = parser.parse_args()
    tiny = build_tiny_model(Path(tempfile.mkdtemp(prefix="ehub-bench-")) / "tiny", arch="llama", vocab_seed=1)
    with running_stack(
        [{"path": str(tiny), "name": "tiny"}],
        ["--model_selection_method", "all", "--ensemble_method", "loop"],
        api_workers=args.api_workers,
        worker_env={"ENSEMBLEHUB_WORKER_NICE": str(args.worker_nice)},
    ) as stack:
        wait_for_api_processes(stack.base_url, args.api_workers)
        httpx.post(stack.base_url + "/v1/chat/completions", json={**BODY, "background": False}, timeout=120)
        measure = raw_submit_rate if args.client == "raw" else submit_rate
        measure(stack.base_url, min(200, args.submissions), args.concurrency)  # warm every process
        rate, latencies, errors = measure(stack.base_url, args.submissions, args.concurrency)
        s = summary(latencies)
        # after the measure (the worker runs the jobs meanwhile and after): all stored, all final
        final, drained_s = wait_until_final(stack.env["ENSEMBLEHUB_DATABASE_URL"], args.drain_timeout)
        batch = batch_accept(stack.base_url, args.batch_items) if args.batch_items > 0 else None
    print(
        f"\nSubmissions ({args.submissions} background chat completions, {args.concurrency} concurrent "
        f"connections, {args.client} client, {args.api_workers} API process(es), worker at nice "
        f"{args.worker_nice})\n"
    )
    print_table(
        ["accepted/s", "p50 ms", "p95 ms", "p99 ms", "non-202"],
        [[round(rate, 1), s["p50"], s["p95"], s["p99"], errors]],
    )
    stored = sum(final.values())
    print(
        f"\njobs stored {stored} (submitted {1 + min(200, args.submissions) + args.submissions}), "
        f"by status {dict(sorted(final.items()))}, all final after {drained_s:.1f} s more\n"
    )
    if batch is not None:
        print(f"\nBatch of {args.batch_items} items: accepted (HTTP {batch[1]}) in {batch[0]:.2f} s\n")


if __name__ == "__main__":
    main()
