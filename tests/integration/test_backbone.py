"""The whole path a request travels: HTTP -> Postgres -> Redis -> Celery worker -> model -> back."""

from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.usefixtures("show_logs_on_failure")

INFERENCE_BODY = {
    "instruction": "You are a helpful math tutor.",
    "input": "What is 2+2?",
    "ensemble_config": {
        "model_selection_method": "all",
        "aggregation_method": "round_robin",
        "aggregation_level": "sentence",
    },
    "max_rounds": 3,
    "max_tokens": 12,
}


def test_root_lists_endpoints(stack):
    body = httpx.get(stack.base_url + "/").json()
    assert body["name"] == "Ensemble-Hub"
    assert "POST /v1/ensemble/inference" in body["endpoints"]
    assert "GET /v1/jobs/{job_id}" in body["endpoints"]


def test_status_reports_database_broker_and_worker(stack):
    resp = httpx.get(stack.base_url + "/status")
    assert resp.status_code == 200
    body = resp.json()
    assert body["checks"]["database"]["ok"] and body["checks"]["broker"]["ok"]
    assert body["workers"], "the worker's heartbeat should be visible"
    assert any(m["name"] == "all" for m in body["available_methods"]["model_selection"])


def test_inference_runs_on_the_worker_and_the_job_can_be_polled(stack):
    with stack.client() as client:
        resp = client.post("/v1/ensemble/inference", json=INFERENCE_BODY)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        result = body["result"]
        assert set(result["selected_models"]) == {"tiny-llama", "tiny-gpt2"}
        assert result["output"], "the tiny models still generate text"
        assert body["usage"]["completion_tokens"] > 0
        job = client.get(f"/v1/jobs/{body['id']}").json()
    assert job["status"] == "succeeded"
    assert job["result"]["text"] == result["output"]
    assert job["attempts"] == 1
    assert job["config_version_id"] == body["config_version_id"]
    assert job["timings"]["queue_wait_ms"] >= 0 and job["timings"]["run_ms"] > 0


def test_unknown_job_is_a_404_in_the_openai_envelope(stack):
    resp = httpx.get(stack.base_url + "/v1/jobs/job-doesnotexist")
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "job_not_found"


def test_invalid_method_is_rejected_with_the_valid_names(stack):
    body = {**INFERENCE_BODY, "ensemble_config": {"model_selection_method": "zscroe"}}
    resp = httpx.post(stack.base_url + "/v1/ensemble/inference", json=body)
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["code"] == "invalid_config"
    assert "zscore" in error["message"], "the message lists the valid names"


def test_config_post_appends_a_version_and_jobs_record_it(stack):
    with stack.client() as client:
        before = client.get("/v1/ensemble/config").json()
        resp = client.post(
            "/v1/ensemble/config",
            json={"default_ensemble_config": {"max_rounds": 2}, "note": "fewer rounds"},
        )
        assert resp.status_code == 200, resp.text
        after = resp.json()
        assert after["version"] == before["version"] + 1
        assert after["default_ensemble_config"]["max_rounds"] == 2
        assert client.get("/v1/ensemble/config").json()["version"] == after["version"]
        versions = client.get("/v1/ensemble/config/versions").json()["data"]
        assert [v["version"] for v in versions[:2]] == [after["version"], before["version"]]

        body = {k: v for k, v in INFERENCE_BODY.items() if k != "max_rounds"}
        job_id = client.post("/v1/ensemble/inference", json=body).json()["id"]
        job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["config_version_id"] == after["id"]
    assert job["request"]["ensemble_config"]["max_rounds"] == 2
    assert len(job["result"]["trace"]["rounds"]) <= 2


def test_invalid_config_update_is_rejected_and_stores_nothing(stack):
    with stack.client() as client:
        before = client.get("/v1/ensemble/config").json()["version"]
        resp = client.post(
            "/v1/ensemble/config", json={"default_ensemble_config": {"ensemble_method": "nope"}}
        )
        assert resp.status_code == 400
        assert client.get("/v1/ensemble/config").json()["version"] == before


@pytest.mark.slow
def test_inference_returns_a_real_smollm2_answer(stack):
    """The bundled model through the whole service."""
    with stack.client(timeout=300) as client:
        version = client.post(
            "/v1/ensemble/config",
            json={
                "model_specs": [
                    {"path": "bundled:smollm2", "engine": "hf", "device": "cpu", "name": "smollm2"}
                ]
            },
        ).json()
        body = {
            "input": "What is the capital of France? Answer in one word.",
            "ensemble_config": {"model_selection_method": "all", "aggregation_method": "round_robin"},
            "max_tokens": 8,
            "seed": 0,  # without a seed every request draws fresh randomness (OpenAI semantics)
            "timeout": 240,
        }
        resp = client.post("/v1/ensemble/inference", json=body)
        assert resp.status_code == 200, resp.text
        result = resp.json()
        # restore the tiny models for the other tests
        client.post("/v1/ensemble/config", json={"model_specs": stack.tiny_specs})
    assert result["config_version_id"] == version["id"]
    assert result["result"]["selected_models"] == ["smollm2"]
    assert "paris" in result["result"]["output"].lower()


def test_start_up_flags_became_the_stored_default_config(stack):
    versions = httpx.get(stack.base_url + "/v1/ensemble/config/versions").json()["data"]
    flagged = [v for v in versions if v["note"] == "from server start-up flags"]
    assert flagged, versions
    config = flagged[-1]["default_ensemble_config"]
    assert config["model_selection_method"] == "all"
    assert config["ensemble_method"] == "loop"
    assert config["max_rounds"] == 4
    assert [m["name"] for m in flagged[-1]["model_specs"]] == ["tiny-llama", "tiny-gpt2"]


def test_uvicorn_entry_point_serves_the_app(stack):
    import sys

    from tests import services

    port = services.free_port()
    proc = services.Process(
        [sys.executable, "-m", "uvicorn", "ensemblehub.api:app", "--port", str(port)],
        stack.env,
        stack.log_dir / "uvicorn.log",
    )
    try:
        services.wait_http(f"http://127.0.0.1:{port}/status", proc)
        assert httpx.get(f"http://127.0.0.1:{port}/v1/ensemble/config").json()["version"] >= 1
    finally:
        proc.stop()
