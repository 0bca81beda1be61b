"""Batch submit-and-poll: the guide's body, OpenAI's batch states, results in input order,
cancel, and 10,000 items accepted in seconds."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests import services

pytestmark = pytest.mark.usefixtures("show_logs_on_failure")


def _poll(client: httpx.Client, batch_id: str, until: set[str], timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = client.get(f"/v1/ensemble/batch/{batch_id}").json()
        if batch["status"] in until:
            return batch
        time.sleep(0.2)
    raise AssertionError(f"batch still {batch['status']}: {batch}")


def test_submit_poll_to_completed_and_read_results_in_input_order(stack):
    questions = [f"What is {i}+{i}?" for i in range(6)]
    body = {
        "examples": [
            {
                "instruction": "You are a math expert." if i % 2 else "You are a helpful assistant.",
                "input": q,
                "ensemble_config": {"model_selection_method": "all", "aggregation_method": "round_robin"},
            }
            for i, q in enumerate(questions)
        ],
        "batch_size": 2,
        "max_tokens": 4,
    }
    with stack.client() as client:
        resp = client.post("/v1/ensemble/batch", json=body)
        assert resp.status_code == 202, resp.text
        batch = resp.json()
        assert resp.headers["location"] == f"/v1/ensemble/batch/{batch['id']}"
        assert batch["object"] == "batch" and batch["status"] in ("validating", "in_progress")
        assert batch["request_counts"] == {"total": 6, "completed": 0, "failed": 0, "cancelled": 0}

        done = _poll(client, batch["id"], {"completed"})
        assert done["request_counts"]["completed"] == 6 and done["completed_at"] is not None

        first = client.get(f"/v1/ensemble/batch/{batch['id']}/results", params={"limit": 4}).json()
        rest = client.get(
            f"/v1/ensemble/batch/{batch['id']}/results", params={"after": first["last_index"]}
        ).json()
        items = first["data"] + rest["data"]
        assert first["has_more"] and not rest["has_more"]
        assert [i["index"] for i in items] == list(range(6))
        assert [i["input"] for i in items] == questions
        assert all(i["status"] == "succeeded" and i["result"]["output"] for i in items)

        jsonl = client.get(
            f"/v1/ensemble/batch/{batch['id']}/results", headers={"Accept": "application/x-ndjson"}
        )
        assert jsonl.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in jsonl.text.splitlines()]
        assert [line["index"] for line in lines] == list(range(6))
        assert lines[3]["result"]["output"] == items[3]["result"]["output"]

        jobs = client.get("/v1/jobs", params={"batch_id": batch["id"], "status": "succeeded"}).json()
        assert len(jobs["data"]) == 6
        # nobody streams a batch item: its worker publishes no segment events
        item = client.get(f"/v1/jobs/{jobs['data'][0]['id']}").json()
        assert item["request"]["segment_events"] is False


def test_cancel_keeps_finished_items_and_cancels_queued_ones(stack):
    body = {"examples": [{"input": f"Tell a story number {i}"} for i in range(40)], "max_tokens": 6}
    with stack.client() as client:
        batch = client.post("/v1/ensemble/batch", json=body).json()
        # let a few items finish first
        deadline = time.monotonic() + 60
        while client.get(f"/v1/ensemble/batch/{batch['id']}").json()["request_counts"]["completed"] < 2:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        resp = client.post(f"/v1/ensemble/batch/{batch['id']}/cancel")
        assert resp.status_code == 200
        assert resp.json()["status"] in ("cancelling", "cancelled")
        done = _poll(client, batch["id"], {"cancelled"})
        counts = done["request_counts"]
        assert counts["completed"] >= 2 and counts["cancelled"] >= 1
        assert counts["completed"] + counts["failed"] + counts["cancelled"] == 40
        items = client.get(f"/v1/ensemble/batch/{batch['id']}/results", params={"limit": 100}).json()["data"]
        assert (
            sum(i["status"] == "succeeded" and bool(i["result"]["output"]) for i in items)
            == counts["completed"]
        )
        assert all(i["error"]["code"] == "cancelled" for i in items if i["status"] == "cancelled")
        # cancelling again is harmless; a completed batch cannot be cancelled
        assert client.post(f"/v1/ensemble/batch/{batch['id']}/cancel").json()["status"] == "cancelled"


def test_a_completed_batch_cannot_be_cancelled_and_unknown_ones_are_404(stack):
    with stack.client() as client:
        batch = client.post(
            "/v1/ensemble/batch", json={"examples": [{"input": "Hi"}], "max_tokens": 2}
        ).json()
        _poll(client, batch["id"], {"completed"})
        resp = client.post(f"/v1/ensemble/batch/{batch['id']}/cancel")
        assert resp.status_code == 409 and resp.json()["error"]["code"] == "batch_not_cancellable"
        assert client.get("/v1/ensemble/batch/batch-nope").status_code == 404
        bad = client.post(
            "/v1/ensemble/batch",
            json={
                "examples": [
                    {"input": "a"},
                    {"input": "b", "ensemble_config": {"aggregation_method": "no_such_method"}},
                ]
            },
        )
        assert bad.status_code == 400
        assert bad.json()["error"]["param"].startswith("examples.1")


def test_ten_thousand_items_are_accepted_in_seconds(stack, tmp_path):
    """An API whose broker has no worker, so the items stay queued (and cost nothing): the
    measure is acceptance (validate, insert, first chunk on the queue), then cancel."""
    with services.private_redis_db() as idle_broker:
        env = services.service_env(stack.database_url, idle_broker)
        api, base = services.start_api(env, tmp_path, [])
        try:
            body = {
                "examples": [
                    {"instruction": "You are a helpful assistant.", "input": f"What is {i}+{i}?"}
                    for i in range(10_000)
                ],
                "max_tokens": 8,
            }
            started = time.perf_counter()
            resp = httpx.post(base + "/v1/ensemble/batch", json=body, timeout=60)
            accepted_s = time.perf_counter() - started
            assert resp.status_code == 202, resp.text
            print(f"\n10,000-item batch accepted in {accepted_s:.2f} s")
            assert accepted_s < 10
            batch_id = resp.json()["id"]
            assert resp.json()["request_counts"]["total"] == 10_000
            cancelled = httpx.post(f"{base}/v1/ensemble/batch/{batch_id}/cancel", timeout=60).json()
            assert cancelled["status"] == "cancelled"
            assert cancelled["request_counts"]["cancelled"] == 10_000
        finally:
            api.stop()
