"""Secrets are never stored or shown: keys live in the workers' environment
(``api_key_env``), tenants see config versions without how models are loaded or reached,
``/status`` without a key shows only the state, and the keyless mode ignores proxies."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.settings import ApiSettings
from jobqueue.settings import QueueSettings
from persistence.settings import DatabaseSettings
from tests import services


def test_an_api_key_in_a_config_version_is_refused_and_not_stored(hub):
    before = hub.client.get("/v1/ensemble/config/versions", headers=hub.admin).json()["data"]
    member = {"path": "gpt-4o-mini", "engine": "openai", "name": "remote"}
    body = {
        "model_specs": [
            {**member, "engine_options": {"base_url": "https://api.example.com/v1", "api_key": "sk-x"}}
        ]
    }
    resp = hub.client.post("/v1/ensemble/config", json=body, headers=hub.admin)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["code"] == "secret_in_config"
    assert resp.json()["error"]["param"] == "model_specs.engine_options.api_key"
    assert "api_key_env" in resp.json()["error"]["message"]
    after = hub.client.get("/v1/ensemble/config/versions", headers=hub.admin).json()["data"]
    assert after == before and "sk-x" not in str(after)


def test_a_tenant_sees_config_versions_without_urls_or_engine_options(hub):
    admin_view = hub.client.get("/v1/ensemble/config", headers=hub.admin).json()
    assert admin_view["scorers"]["judge"]["url"] == hub.judge.url, "the admin sees everything"
    for path in ("/v1/ensemble/config", "/v1/ensemble/config/versions"):
        tenant_view = hub.client.get(path, headers=hub.tenant)
        assert tenant_view.status_code == 200
        assert hub.judge.url not in tenant_view.text and "engine_options" not in tenant_view.text
    assert (
        hub.client.get("/v1/ensemble/config", headers=hub.tenant).json()["scorers"]["judge"]["type"]
        == "remote"
    )


def test_status_without_a_key_shows_state_and_checks_only(hub):
    public = hub.client.get("/status").json()
    assert set(public) == {"status", "mode", "checks"}, public
    assert public["checks"]["workers"] == {"ok": True, "count": 1}
    assert "url" not in public["checks"]["broker"]
    assert "workers" not in hub.client.get("/status", headers=hub.tenant).json()
    detailed = hub.client.get("/status", headers=hub.admin).json()
    assert detailed["workers"][0]["hostname"] and detailed["workers"][0]["pid"]


@pytest.fixture
def open_mode_client() -> Iterator[TestClient]:
    with services.migrated_database() as db_url, services.private_redis_db() as broker:
        app = create_app(
            ApiSettings(),
            queue_settings=QueueSettings(broker_url=broker),
            database_settings=DatabaseSettings(database_url=db_url),
        )
        with TestClient(app, client=("127.0.0.1", 40000)) as client:
            yield client


@pytest.mark.parametrize(
    "header",
    [{"X-Forwarded-For": "127.0.0.1"}, {"Forwarded": "for=127.0.0.1"}, {"X-Real-IP": "127.0.0.1"}],
)
def test_the_keyless_mode_refuses_a_request_relayed_by_a_proxy(open_mode_client, header):
    assert open_mode_client.get("/v1/ensemble/config").status_code == 200, "a local request is served"
    relayed = open_mode_client.get("/v1/ensemble/config", headers=header)
    assert relayed.status_code == 401 and relayed.json()["error"]["code"] == "no_api_keys"
