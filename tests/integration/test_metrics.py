"""``GET /metrics`` on the live stack: it parses with prometheus_client's own parser, and its
numbers move when jobs run, wait in the queue and are cancelled."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests import services

pytestmark = pytest.mark.usefixtures("show_logs_on_failure")


def scrape(client) -> dict[str, dict[tuple, float]]:
    """{sample name: {sorted label items: value}}, parsed by prometheus_client."""
    resp = client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(resp.text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples, name: str, **labels: str) -> float:
    return samples.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


def total(samples, name: str, **labels: str) -> float:
    """Sum over every series whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for key, v in samples.get(name, {}).items() if wanted <= set(key))


def test_metrics_parse_and_move_when_a_job_runs(stack):
    with stack.client() as client:
        before = scrape(client)
        assert value(before, "ensemblehub_dependency_up", dependency="database") == 1
        assert value(before, "ensemblehub_dependency_up", dependency="broker") == 1
        assert {dict(k)["queue"] for k in before["ensemblehub_queue_depth"]} == {
            "models",
            "webhooks",
            "maintenance",
        }
        assert {dict(k)["state"] for k in before["ensemblehub_jobs"]} == {
            "queued",
            "running",
            "succeeded",
            "failed",
            "cancelled",
        }
        resp = client.post(
            "/v1/chat/completions",
            json={
                "model": "ensemble",
                "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": 8,
                "seed": 0,  # reproducible: without a seed the members' sampling is fresh each request
                # 2-token segments to the end: the loop hands over, so both members generate
                "ignore_eos": True,
                "ensemble_config": {"aggregation_params": {"segment_tokens": 2, "segment_boundary": "none"}},
            },
        )
        assert resp.status_code == 200, resp.text
        job = client.get(f"/v1/jobs/{resp.json()['id']}").json()
        after = scrape(client)

    assert (
        value(after, "ensemblehub_jobs", state="succeeded")
        >= value(before, "ensemblehub_jobs", state="succeeded") + 1
    )
    assert value(after, "ensemblehub_jobs_finished_total", state="succeeded") == value(
        after, "ensemblehub_jobs", state="succeeded"
    )
    latency = "ensemblehub_job_latency_seconds_count"
    assert value(after, latency, state="succeeded") >= value(before, latency, state="succeeded") + 1
    assert value(after, "ensemblehub_job_latency_seconds_bucket", state="succeeded", le="+Inf") == value(
        after, latency, state="succeeded"
    )

    # tokens per model grew by at least this job's usage
    per_model = job["result"]["usage"]["per_model"]
    assert set(per_model) == {"tiny-llama", "tiny-gpt2"}
    for model, counts in per_model.items():
        for kind in ("generated", "prefilled", "discarded"):
            name = "ensemblehub_model_tokens_total"
            grown = value(after, name, model=model, kind=kind) - value(before, name, model=model, kind=kind)
            assert grown >= counts[kind], (model, kind)
        assert value(after, "ensemblehub_model_tokens_total", model=model, kind="generated") > 0

    # rounds and segment wins under the job's method
    method = job["result"]["trace"]["method"]
    rounds = job["result"]["trace"]["rounds"]
    assert rounds, "the job ran at least one round"
    name = "ensemblehub_job_rounds_count"
    assert value(after, name, method=method) >= value(before, name, method=method) + 1
    wins = "ensemblehub_segment_wins_total"
    accepted = sum(1 for r in rounds if r.get("accepted", True))
    assert total(after, wins, method=method) - total(before, wins, method=method) >= accepted
    for r in rounds:
        assert value(after, wins, method=method, model=r["winner"]) > 0

    # this process timed the request under its route template
    http = "ensemblehub_http_request_duration_seconds_count"
    route = {"method": "POST", "route": "/v1/chat/completions", "status": "200"}
    assert value(after, http, **route) >= value(before, http, **route) + 1
    assert value(after, http, method="GET", route="/v1/jobs/{job_id}", status="200") >= 1


def test_queue_depth_and_cancelled_jobs_move(stack):
    """With the worker's models queue paused the tasks wait in Redis: the depth and the queued
    jobs grow by the batch's size; cancelling moves them to cancelled (the bulk path)."""
    items = [{"input": f"Say {i}"} for i in range(3)]
    with stack.client() as client, services.queue_paused(stack.broker_url):
        before = scrape(client)
        resp = client.post("/v1/ensemble/batch", json={"examples": items, "max_tokens": 4})
        assert resp.status_code == 202, resp.text
        waiting = scrape(client)
        # at least: an earlier test's batch may still be sending its last chunks
        assert value(waiting, "ensemblehub_queue_depth", queue="models") >= value(
            before, "ensemblehub_queue_depth", queue="models"
        ) + len(items)
        assert value(waiting, "ensemblehub_jobs", state="queued") == value(
            before, "ensemblehub_jobs", state="queued"
        ) + len(items)
        assert client.post(f"/v1/ensemble/batch/{resp.json()['id']}/cancel").json()["status"] == "cancelled"
        cancelled = scrape(client)
    assert value(cancelled, "ensemblehub_jobs", state="queued") == value(
        before, "ensemblehub_jobs", state="queued"
    )
    for name in ("ensemblehub_jobs", "ensemblehub_jobs_finished_total"):
        assert value(cancelled, name, state="cancelled") == value(before, name, state="cancelled") + len(
            items
        )
