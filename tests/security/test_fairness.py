"""One tenant cannot take the others' share: batch items count against the rate limit, and
each tenant has its own cap on queued jobs. In-process API, real Postgres and Redis, no
worker (submitted jobs stay queued)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from fastapi.testclient import TestClient

from api.app import create_app
from api.settings import ApiSettings
from jobqueue.settings import QueueSettings
from persistence.settings import DatabaseSettings
from tests import services
from tests.security.conftest import _key

JOB = {
    "model": "ensemble",
    "messages": [{"role": "user", "content": "Hi"}],
    "max_tokens": 2,
    "background": True,
}


@contextmanager
def keyed(**settings: object) -> Iterator[tuple[TestClient, dict[str, str], dict[str, str]]]:
    with services.migrated_database() as db_url, services.private_redis_db() as broker:
        app = create_app(
            ApiSettings(**settings),
            queue_settings=QueueSettings(broker_url=broker),
            database_settings=DatabaseSettings(database_url=db_url),
        )
        alice, bob = _key(db_url, "alice", admin=False), _key(db_url, "bob", admin=False)
        with TestClient(app, client=("127.0.0.1", 40000)) as client:
            yield client, alice, bob


def test_batch_items_count_against_the_rate_limit():
    with keyed(rate_limit_requests=6, rate_limit_window_s=300) as (client, alice, bob):
        _batch_then_limited(client, alice, bob)


def _batch_then_limited(client: TestClient, alice: dict[str, str], bob: dict[str, str]) -> None:
    items = {"examples": [{"input": f"q{i}"} for i in range(5)], "max_tokens": 2}
    assert client.post("/v1/ensemble/batch", json=items, headers=alice).status_code in (200, 202)
    # the batch counted 5 of the 6 units: one more request passes, the next does not
    assert client.get("/v1/jobs", headers=alice).status_code == 200
    limited = client.get("/v1/jobs", headers=alice)
    assert limited.status_code == 429 and limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert client.get("/v1/jobs", headers=bob).status_code == 200, "another tenant's budget"


def test_each_tenant_has_its_own_cap_on_queued_jobs():
    with keyed(max_queued_jobs_per_tenant=2) as (client, alice, bob):
        _fill_then_full(client, alice, bob)


def _fill_then_full(client: TestClient, alice: dict[str, str], bob: dict[str, str]) -> None:
    for _ in range(2):
        assert client.post("/v1/chat/completions", json=JOB, headers=alice).status_code == 202
    full = client.post("/v1/chat/completions", json=JOB, headers=alice)
    assert full.status_code == 429 and full.json()["error"]["code"] == "tenant_queue_full"
    assert full.headers["retry-after"]
    assert client.post("/v1/chat/completions", json=JOB, headers=bob).status_code == 202


def test_parameters_that_multiply_work_are_capped_with_the_cap_named():
    cases = [
        (
            {"aggregation_level": "response", "aggregation_params": {"samples_per_model": 33}},
            "samples_per_model",
        ),
        ({"ensemble_method": "simple", "aggregation_params": {"max_resamples": 9}}, "max_resamples"),
        (
            {"model_selection_method": "llm_blender", "model_selection_params": {"probe_tokens": 257}},
            "probe_tokens",
        ),
    ]
    with keyed() as (client, alice, _bob):
        for config, name in cases:
            resp = client.post("/v1/chat/completions", json={**JOB, "ensemble_config": config}, headers=alice)
            assert resp.status_code == 400, resp.text
            error = resp.json()["error"]
            assert error["code"] == "parameter_too_large" and error["param"].endswith(name), error
            assert "ENSEMBLEHUB_MAX_" in error["message"]
        assert client.get("/v1/jobs", headers=alice).json()["data"] == [], "nothing was queued"
