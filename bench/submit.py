"""Accepted submissions per second, and the time to accept a 10,000-item batch.

    python bench/submit.py [--submissions 600] [--concurrency 16] [--batch-items 10000]

Submissions are `POST /v1/chat/completions` with `background: true` (answered 202 once the job
is committed and sent to the broker), from concurrent clients over keep-alive connections.
The worker is running meanwhile (as in production), on the same 2 cores.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stack import print_table, running_stack, summary  # noqa: E402
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
    args = parser.parse_args()
    tiny = build_tiny_model(Path(tempfile.mkdtemp(prefix="ehub-bench-")) / "tiny", arch="llama", vocab_seed=1)
    with running_stack(
        [{"path": str(tiny), "name": "tiny"}],
        ["--model_selection_method", "all", "--ensemble_method", "loop"],
    ) as stack:
        httpx.post(stack.base_url + "/v1/chat/completions", json={**BODY, "background": False}, timeout=120)
        rate, latencies, errors = submit_rate(stack.base_url, args.submissions, args.concurrency)
        s = summary(latencies)
        batch_s, batch_status = batch_accept(stack.base_url, args.batch_items)
    print(
        f"\nSubmissions ({args.submissions} background chat completions, {args.concurrency} concurrent clients)\n"
    )
    print_table(
        ["accepted/s", "p50 ms", "p95 ms", "p99 ms", "non-202"],
        [[round(rate, 1), s["p50"], s["p95"], s["p99"], errors]],
    )
    print(f"\nBatch of {args.batch_items} items: accepted (HTTP {batch_status}) in {batch_s:.2f} s\n")


if __name__ == "__main__":
    main()
