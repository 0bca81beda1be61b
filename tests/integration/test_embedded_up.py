"""`ensemblehub up` with neither Postgres nor Redis reachable falls back to embedded mode."""

from __future__ import annotations

import json
import os
import sys
import time

import httpx

from tests import services


def test_up_falls_back_to_embedded_mode_and_answers(tiny_model_dirs, tmp_path):
    port = services.free_port()
    env = {
        **os.environ,
        "ENSEMBLEHUB_DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:1/nothing",
        "ENSEMBLEHUB_BROKER_URL": "redis://127.0.0.1:1/5",
        "ENSEMBLEHUB_DATA_DIR": str(tmp_path / "data"),
        "PYTHONUNBUFFERED": "1",
    }
    specs = [{"path": str(tiny_model_dirs["llama"]), "engine": "hf", "device": "cpu", "name": "tiny-llama"}]
    argv = [
        sys.executable,
        "-m",
        "ensemblehub.cli",
        "up",
        "--port",
        str(port),
        "--model_specs",
        json.dumps(specs),
        "--model_selection_method",
        "all",
        "--ensemble_method",
        "loop",
    ]
    proc = services.Process(argv, env, tmp_path / "up.log")
    base = f"http://127.0.0.1:{port}"
    try:
        services.wait_http(base + "/", proc, timeout=90)
        log = proc.log()
        assert "PostgreSQL does not answer" in log and "Redis does not answer" in log
        assert "embedded mode" in log
        resp = httpx.post(
            base + "/v1/ensemble/inference",
            json={"input": "What is 2+2?", "max_tokens": 8, "max_rounds": 2},
            timeout=120,
        )
        assert resp.status_code == 200, resp.text + proc.log()
        body = resp.json()
        assert body["result"]["selected_models"] == ["tiny-llama"]
        status = httpx.get(base + "/status").json()
        assert status["mode"] == "embedded"
        job = httpx.get(f"{base}/v1/jobs/{body['id']}").json()
        assert job["status"] == "succeeded"
        assert (tmp_path / "data" / "embedded.sqlite").exists()
        # cancelling a running job works on the in-memory event bus too
        long_job = {
            "model": "ensemble",
            "prompt": "Count.",
            "max_tokens": 4000,
            "max_rounds": 64,
            "ignore_eos": True,
            "ensemble_config": {"max_repeat": 100},
            "background": True,
        }
        job_id = httpx.post(base + "/v1/chat/completions", json=long_job, timeout=30).json()["id"]
        deadline = time.monotonic() + 60
        while httpx.get(f"{base}/v1/jobs/{job_id}").json()["status"] == "queued":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.3)
        cancelled = httpx.post(f"{base}/v1/jobs/{job_id}/cancel", timeout=30).json()
        assert cancelled["status"] == "cancelled", cancelled
        assert cancelled["result"] is not None and cancelled["usage"]["completion_tokens"] < 2048
        assert cancelled["result"]["stop_reason"] == "cancelled"
    finally:
        proc.stop()


def test_up_with_postgres_and_redis_runs_workers_beat_and_answers(tiny_model_dirs, tmp_path):
    port = services.free_port()
    specs = [{"path": str(tiny_model_dirs["llama"]), "engine": "hf", "device": "cpu", "name": "tiny-llama"}]
    with services.migrated_database() as db_url, services.private_redis_db() as broker:
        env = services.service_env(
            db_url,
            broker,
            ENSEMBLEHUB_DATA_DIR=str(tmp_path / "data"),
            ENSEMBLEHUB_FLOWER_PORT=str(services.free_port()),
            ENSEMBLEHUB_FLOWER_BASIC_AUTH="admin:secret",
        )
        argv = [
            sys.executable,
            "-m",
            "ensemblehub.cli",
            "up",
            "--port",
            str(port),
            "--model_specs",
            json.dumps(specs),
            "--model_selection_method",
            "all",
            "--ensemble_method",
            "loop",
        ]
        proc = services.Process(argv, env, tmp_path / "up.log")
        base = f"http://127.0.0.1:{port}"
        try:
            services.wait_http(base + "/", proc, timeout=90)
            resp = httpx.post(
                base + "/v1/ensemble/inference", json={"input": "What is 2+2?", "max_tokens": 8}, timeout=120
            )
            assert resp.status_code == 200, resp.text + proc.log()
            import time

            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and len(httpx.get(base + "/status").json()["workers"]) < 2:
                time.sleep(0.5)
            status = httpx.get(base + "/status").json()
            assert status["mode"] == "distributed"
            assert len(status["workers"]) == 2, status["workers"]
            log = proc.log_path.read_text(errors="replace")  # the whole log: the banner is early
            assert "Flower" in log and "curl" in log
            assert "beat: Starting" in log or "beat" in log
        finally:
            proc.stop()
