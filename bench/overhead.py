"""Service overhead: latency of /v1/chat/completions through the whole path (HTTP, Postgres,
Redis, Celery worker, back) against the same generation called in-process.

    python bench/overhead.py [--requests 60] [--smollm-requests 10] [--skip-smollm] [--block 5]
                             [--client raw|httpx]

The two paths run in alternating blocks of ``--block`` requests (the service's stack and the
in-process pool both loaded), so that both see the machine at the same moments.

Prints p50/p95/p99 per path and model, the difference (the service overhead), and resident
memory of the worker process and of each loaded model.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stack import print_table, running_stack, summary  # noqa: E402
from ensemble_core.engine import run_ensemble  # noqa: E402
from ensemble_core.pool import ModelPool  # noqa: E402
from ensemble_core.spec import ChatMessage, EnsembleConfig, EnsembleSpec, GenerationRequest, ModelSpec  # noqa: E402
from tests.tiny_models import build_tiny_model  # noqa: E402

CONFIG = {"model_selection_method": "all", "aggregation_method": "round_robin", "max_rounds": 4}
PROMPT = "What is 2+2?"


def rss_mb(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class InProcess:
    """run_ensemble called directly on a pool of this process (loaded and warmed up here)."""

    def __init__(self, spec_json: dict, max_tokens: int) -> None:
        self.spec = EnsembleSpec(model_specs=[ModelSpec.model_validate(spec_json)])
        self.config = EnsembleConfig.model_validate(CONFIG)
        self.request = GenerationRequest(
            messages=[ChatMessage(role="user", content=PROMPT)], max_tokens=max_tokens, temperature=0
        )
        self.pool = ModelPool()
        before = rss_mb()
        run_ensemble(self.spec, self.config, self.request, self.pool)  # load + warm up
        self.model_mb = rss_mb() - before
        self.times: list[float] = []

    def run(self, n: int) -> None:
        for _ in range(n):
            t = time.perf_counter()
            run_ensemble(self.spec, self.config, self.request, self.pool)
            self.times.append((time.perf_counter() - t) * 1000)


class RawClient:
    """One keep-alive HTTP/1.1 connection, requests written and answers read by hand, as wrk or
    a load generator does: ~0.1 ms of CPU a request where httpx takes ~1 ms, which was counted
    as the service's overhead (the client runs on the same 2 cores, in the timed path)."""

    def __init__(self, base_url: str) -> None:
        host, port = base_url.removeprefix("http://").split(":")
        self.host = f"{host}:{port}"
        self.sock = socket.create_connection((host, int(port)))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = self.sock.makefile("rb")

    def post_json(self, path: str, body: dict) -> tuple[int, dict]:
        payload = json.dumps(body).encode()
        self.sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        status = int(self.reader.readline().split()[1])
        length = 0
        while (line := self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, json.loads(self.reader.read(length))

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


class ThroughService:
    """The same generation as one /v1/chat/completions request at a time to a running stack,
    from the raw client (default) or httpx (``--client httpx``, what most Python clients use)."""

    def __init__(self, client: httpx.Client, max_tokens: int, kind: str = "raw") -> None:
        self.client = client
        self.raw = RawClient(str(client.base_url).rstrip("/")) if kind == "raw" else None
        self.body = {
            "model": "ensemble",
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "ensemble_config": CONFIG,
        }
        for _ in range(3):  # model load + warm-up
            self._post()
        self.times: list[float] = []
        self.job_ids: list[str] = []

    def _post(self) -> str:
        if self.raw is not None:
            status, answer = self.raw.post_json("/v1/chat/completions", self.body)
            if status != 200:
                raise RuntimeError(f"HTTP {status}: {answer}")
            return str(answer["id"])
        r = self.client.post("/v1/chat/completions", json=self.body)
        r.raise_for_status()
        return str(r.json()["id"])

    def run(self, n: int) -> None:
        for _ in range(n):
            t = time.perf_counter()
            job_id = self._post()
            self.times.append((time.perf_counter() - t) * 1000)
            self.job_ids.append(job_id)

    def split(self) -> dict[str, float]:
        """The p50 of each part of a served request, from the jobs' timestamps (read after the
        measure, so the reads are not timed and do not sit between two timed requests)."""
        splits = [self.client.get(f"/v1/jobs/{job_id}").json().get("timings", {}) for job_id in self.job_ids]
        queue = [s.get("queue_wait_ms", 0.0) for s in splits]
        model = [s.get("model_ms", 0.0) for s in splits]
        # the worker's time around the model: from its claim to its final write, less the model
        around = [s.get("run_ms", 0.0) - s.get("model_ms", 0.0) for s in splits]
        # the rest of the request: the API before the job row's created_at (parse, checks,
        # subscribe), and from the final write until the client has the answer (done event, answer)
        outside = [t - s.get("total_ms", 0.0) for t, s in zip(self.times, splits, strict=True)]
        return {
            "queue_wait_p50": summary(queue)["p50"],
            "model_p50": summary(model)["p50"],
            "around_p50": summary(around)["p50"],
            "outside_p50": summary(outside)["p50"],
        }


def measure(
    spec_json: dict, max_tokens: int, n: int, block: int, client: str = "raw"
) -> tuple[InProcess, ThroughService, float, dict]:
    """Both paths, in alternating blocks of ``block`` requests: the machine's speed drifts by
    tens of percent over a minute (other tenants of the host), and measuring one path after the
    other put that drift into the difference. Returns both, the worker's RSS and the split."""
    direct = InProcess(spec_json, max_tokens)
    with running_stack([spec_json]) as stack, httpx.Client(base_url=stack.base_url, timeout=300) as http:
        served = ThroughService(http, max_tokens, client)
        done = 0
        while done < n:
            k = min(block, n - done)
            direct.run(k)
            served.run(k)
            done += k
        worker_pid = int(http.get("/status").json()["workers"][0]["pid"])
        worker_mb = rss_mb(worker_pid)
        split = served.split()
        if served.raw is not None:
            served.raw.close()
    return direct, served, worker_mb, split


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--smollm-requests", type=int, default=10)
    parser.add_argument("--skip-smollm", action="store_true")
    parser.add_argument("--block", type=int, default=5, help="requests per path before switching")
    parser.add_argument("--client", choices=["raw", "httpx"], default="raw", help="the served path's client")
    args = parser.parse_args()
    tiny_dir = build_tiny_model(
        Path(tempfile.mkdtemp(prefix="ehub-bench-")) / "tiny-llama", arch="llama", vocab_seed=1
    )
    cases = [("tiny llama", {"path": str(tiny_dir), "name": "tiny"}, 8, args.requests)]
    if not args.skip_smollm:
        cases.append(
            ("SmolLM2-135M", {"path": "bundled:smollm2", "name": "smollm2"}, 8, args.smollm_requests)
        )
    rows, memory, splits = [], [], []
    for label, spec_json, max_tokens, n in cases:
        direct, served, worker_mb, split = measure(spec_json, max_tokens, n, args.block, args.client)
        d, s = summary(direct.times), summary(served.times)
        rows.append([label, "in-process", n, d["p50"], d["p95"], d["p99"]])
        rows.append([label, "service", n, s["p50"], s["p95"], s["p99"]])
        rows.append([label, "overhead", n, s["p50"] - d["p50"], s["p95"] - d["p95"], s["p99"] - d["p99"]])
        memory.append([label, round(direct.model_mb), round(worker_mb)])
        splits.append(
            [label, split["outside_p50"], split["queue_wait_p50"], split["around_p50"], split["model_p50"]]
        )
    print(
        f"\nService overhead ({os.cpu_count()} cores; max_tokens=8, sequential requests from the {args.client} client, alternating blocks of {args.block}; ms)\n"
    )
    print_table(["model", "path", "n", "p50", "p95", "p99"], rows)
    print("\nLatency split of a served request (p50, ms; from the job's timestamps)\n")
    print_table(
        [
            "model",
            "API before the insert + after the final write",
            "queue wait (created to claimed)",
            "worker around the model",
            "model time",
        ],
        splits,
    )
    print("\nResident memory (MB)\n")
    print_table(["model", "added by loading the model (in-process)", "worker process RSS"], memory)


if __name__ == "__main__":
    main()
