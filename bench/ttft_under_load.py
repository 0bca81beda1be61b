"""Streaming time to first token for one member (SmolLM2) while other jobs decode on the same model.

    python bench/ttft_under_load.py [--background 8] [--requests 12] [--prompt-tokens 40]
                                    [--prefix-sharing-mb 256]

Starts the whole service (API, Redis, one Celery worker process, Postgres) with SmolLM2 as the
only member, warms it, then measures streaming ``POST /v1/chat/completions`` requests one after
another (a ~40-token prompt, 16 tokens): first with nothing else running, then while
``--background`` other clients keep one non-streaming 64-token job each running on the same
model. TTFT is the time from sending the request to the first content delta, read by the
client. ``--prefix-sharing-mb 0`` turns off the key/values shared across jobs
(``shared_prefixes``; every chat prompt here starts with the same ~26 tokens: SmolLM2's template,
its default system prompt and "Request"). Each measured job's ``timings`` (``GET /v1/jobs/{id}``) split it: the queue wait
(submission until a worker thread claims the job) and the rest (prompt rendering, the prefill
at the decode loop's next step boundary, the first decode step, the Redis hop back).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stack import percentile, print_table, running_stack  # noqa: E402

SMOLLM2 = [{"path": "bundled:smollm2", "name": "smollm2", "temperature": 0.7}]
FLAGS = ["--model_selection_method", "all", "--ensemble_method", "loop"]
WORDS = "the quiet harbour town wakes early as fishing boats return with their night catch".split()


def prompt(tokens: int, i: int) -> str:
    """A prompt of about ``tokens`` tokens with SmolLM2's chat template (its default system
    prompt and the template take ~30), plain English words."""
    words = [WORDS[(i + k) % len(WORDS)] for k in range(max(1, tokens - 36))]
    return f"Request {i}: continue this story in one sentence. " + " ".join(words)


def stream_once(client: httpx.Client, text: str, max_tokens: int) -> tuple[float, str | None, int]:
    """(seconds to the first content delta, job id, prompt tokens) of one streaming request."""
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    first: float | None = None
    job_id: str | None = None
    prompt_tokens = 0
    with client.stream("POST", "/v1/chat/completions", json=body) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            job_id = job_id or chunk.get("id")
            if chunk.get("usage"):
                prompt_tokens = chunk["usage"]["prompt_tokens"]
            choices = chunk.get("choices") or []
            if first is None and choices and (choices[0].get("delta") or {}).get("content"):
                first = time.perf_counter() - started
    if first is None:
        raise RuntimeError("the stream carried no content")
    return first, job_id, prompt_tokens


def background(base_url: str, stop: threading.Event, counts: list[int], i: int) -> None:
    with httpx.Client(base_url=base_url, timeout=600) as client:
        while not stop.is_set():
            resp = client.post(
                "/v1/chat/completions",
                json={
                    "model": "smollm2",
                    "messages": [{"role": "user", "content": f"Tell a long story about ship {i}."}],
                    "max_tokens": 64,
                    "ignore_eos": True,
                },
            )
            resp.raise_for_status()
            counts[i] += 1


def measure(client: httpx.Client, requests: int, prompt_tokens: int, offset: int) -> dict[str, float]:
    ttfts, waits, prompt_sizes = [], [], []
    for i in range(requests):
        ttft, job_id, size = stream_once(client, prompt(prompt_tokens, offset + i), 16)
        ttfts.append(ttft * 1000)
        prompt_sizes.append(size)
        if job_id:
            job = client.get(f"/v1/jobs/{job_id}")
            if job.status_code == 200:
                waits.append(float(job.json().get("timings", {}).get("queue_wait_ms") or 0.0))
    return {
        "p50": statistics.median(ttfts),
        "p90": percentile(ttfts, 0.9),
        "max": max(ttfts),
        "queue_wait_p50": statistics.median(waits) if waits else float("nan"),
        "prompt_tokens": statistics.median(prompt_sizes),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--background", type=int, default=8)
    parser.add_argument("--requests", type=int, default=12)
    parser.add_argument("--prompt-tokens", type=int, default=40)
    parser.add_argument("--prefix-sharing-mb", type=float, default=None, help="unset: the default")
    args = parser.parse_args()
    members = SMOLLM2
    if args.prefix_sharing_mb is not None:
        members = [{**SMOLLM2[0], "engine_options": {"prefix_sharing_mb": args.prefix_sharing_mb}}]
    env = {"ENSEMBLEHUB_CONCURRENCY": str(args.background + 4)}
    rows = []
    with (
        running_stack(members, FLAGS, worker_env=env) as stack,
        httpx.Client(base_url=stack.base_url, timeout=600) as client,
    ):
        for _ in range(2):  # warm: model loaded, first forward passes and the loop thread done
            stream_once(client, prompt(args.prompt_tokens, 999), 4)
        idle = measure(client, args.requests, args.prompt_tokens, 0)
        rows.append(["nothing else running", idle])
        stop = threading.Event()
        counts = [0] * args.background
        threads = [
            threading.Thread(target=background, args=(stack.base_url, stop, counts, i), daemon=True)
            for i in range(args.background)
        ]
        for thread in threads:
            thread.start()
        time.sleep(8)  # every background job decoding
        loaded = measure(client, args.requests, args.prompt_tokens, 100)
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
        rows.append([f"{args.background} other jobs decoding on the same model", loaded])
    print(
        f"\nStreaming TTFT, SmolLM2 alone, {args.requests} sequential requests "
        f"(~{args.prompt_tokens}-token prompt, 16 tokens), one worker process (2 cores); "
        f"background jobs finished: {sum(counts)}\n"
    )
    print_table(
        ["while", "prompt tokens", "TTFT p50 ms", "p90 ms", "max ms", "queue wait p50 ms"],
        [[label, r["prompt_tokens"], r["p50"], r["p90"], r["max"], r["queue_wait_p50"]] for label, r in rows],
    )


if __name__ == "__main__":
    main()
