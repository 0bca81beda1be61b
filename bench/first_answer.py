"""Time from `ensemblehub up` to the first answer, and that answer's latency split.

    python bench/first_answer.py [--embedded]

Starts `ensemblehub up` on a fresh database and a private Redis db (or in embedded mode),
sends the README's first request until it succeeds, and prints: seconds to the API answering,
seconds to the first answer, and the job's queue wait / model time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stack import print_table  # noqa: E402
from tests import services  # noqa: E402

BODY = {"model": "ensemble", "prompt": "What is 2+2?", "max_tokens": 32}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--embedded", action="store_true")
    args = parser.parse_args()
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ehub-first-")))
        if args.embedded:
            env = services.service_env(
                "postgresql+psycopg://postgres@127.0.0.1:1/none", "redis://127.0.0.1:1/1"
            )
        else:
            env = services.service_env(
                stack.enter_context(services.migrated_database()),
                stack.enter_context(services.private_redis_db()),
            )
        env["ENSEMBLEHUB_DATA_DIR"] = str(tmp)
        env["ENSEMBLEHUB_FLOWER_PORT"] = str(services.free_port())
        port = services.free_port()
        started = time.perf_counter()
        proc = services.Process(
            [sys.executable, "-m", "ensemblehub.cli", "up", "--port", str(port)], env, tmp / "up.log"
        )
        stack.callback(proc.stop)
        base = f"http://127.0.0.1:{port}"
        services.wait_http(base + "/", proc, timeout=180)
        api_up = time.perf_counter() - started
        while True:
            resp = httpx.post(base + "/v1/chat/completions", json=BODY, timeout=300)
            if resp.status_code == 200:
                break
            if time.perf_counter() - started > 600:
                raise SystemExit(f"no answer: {resp.status_code} {resp.text}\n{proc.log()}")
            time.sleep(0.5)
        first = time.perf_counter() - started
        answer = resp.json()
        job = httpx.get(f"{base}/v1/jobs/{answer['id']}").json()
        t = job["timings"]
        print(
            f"\n`ensemblehub up` ({'embedded' if args.embedded else 'Postgres + Redis'}), bundled default config\n"
        )
        print_table(
            ["API answering (s)", "first answer (s)", "queue wait (ms)", "model time (ms)", "tokens"],
            [
                [
                    round(api_up, 1),
                    round(first, 1),
                    t.get("queue_wait_ms"),
                    t.get("model_ms"),
                    answer["usage"]["completion_tokens"],
                ]
            ],
        )
        print(f"\nanswer: {answer['choices'][0]['text']!r}")


if __name__ == "__main__":
    main()
