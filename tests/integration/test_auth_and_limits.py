"""API keys, tenants, the open mode, the per-tenant rate limit and the request caps.

Each test has a database of its own: a key in the shared test database would switch every
other test's API to keyed mode. The app runs in-process (real Postgres, real Redis for the
rate limit); nothing here needs a worker."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, text

from api.app import create_app
from api.settings import ApiSettings
from ensemblehub.cli import main as cli_main
from jobqueue.settings import QueueSettings
from persistence import api_key_repository
from persistence.db import Database
from persistence.settings import DatabaseSettings
from tests import services

PROMPT = {"model": "ensemble", "prompt": "Hi", "max_tokens": 3}


@pytest.fixture
def own_database() -> Iterator[str]:
    with services.migrated_database() as url:
        yield url


@contextmanager
def _client(database_url: str, *, peer: str = "127.0.0.1", **settings: object) -> Iterator[TestClient]:
    with services.private_redis_db() as broker:  # no worker listens there
        app = create_app(
            ApiSettings(**settings),
            queue_settings=QueueSettings(broker_url=broker),
            database_settings=DatabaseSettings(database_url=database_url),
        )
        with TestClient(app, client=(peer, 40000)) as client:
            yield client


def _key(database_url: str, tenant: str, *, admin: bool = False) -> str:
    db = Database(database_url)
    try:
        with db.transaction() as session:
            _row, token = api_key_repository.create_api_key(session, tenant=tenant, admin=admin)
        return token
    finally:
        db.dispose()


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_without_keys_the_api_is_open_to_this_machine_only_and_says_so(own_database, caplog):
    with caplog.at_level(logging.WARNING, logger="api"), _client(own_database) as local:
        assert local.get("/v1/ensemble/config").status_code == 200
        assert local.get("/v1/models", headers=_bearer("anything")).status_code == 200, "a key is ignored"
    assert any("OPEN MODE" in r.getMessage() for r in caplog.records), "the start-up notice"
    with _client(own_database, peer="203.0.113.9") as remote:
        resp = remote.get("/v1/ensemble/config")
        assert resp.status_code == 401 and resp.json()["error"]["code"] == "no_api_keys"
        assert "ensemblehub keys create" in resp.json()["error"]["message"]
        assert remote.get("/status").status_code == 200 and remote.get("/").status_code == 200


def test_once_a_key_exists_every_endpoint_but_root_and_status_needs_one(own_database, caplog):
    key = _key(own_database, "alice")
    with caplog.at_level(logging.WARNING, logger="api"), _client(own_database) as client:
        paths = [p for p in client.get("/openapi.json").json()["paths"] if "{" not in p]
        for path in paths:
            if path in ("/", "/status", "/health"):  # probes carry no key (vLLM: /health is open)
                continue
            for method in client.get("/openapi.json").json()["paths"][path]:
                resp = client.request(method, path)
                assert resp.status_code == 401, (method, path, resp.status_code)
                assert resp.headers["www-authenticate"] == "Bearer"
        assert (
            client.get("/v1/jobs", headers=_bearer("ehk_not-a-key")).json()["error"]["code"]
            == "invalid_api_key"
        )
        assert client.get("/v1/jobs", headers=_bearer(key)).status_code == 200
        assert client.get("/status").status_code == 200 and client.get("/").status_code == 200
    assert not any("OPEN MODE" in r.getMessage() for r in caplog.records)


def test_config_changes_need_an_admin_key_and_a_revoked_key_stops_working(own_database, monkeypatch, capsys):
    user, admin = _key(own_database, "alice"), _key(own_database, "ops", admin=True)
    with _client(own_database) as client:
        denied = client.post("/v1/ensemble/config", json={"note": "x"}, headers=_bearer(user))
        assert denied.status_code == 403 and denied.json()["error"]["code"] == "admin_key_required"
        assert client.get("/v1/ensemble/config", headers=_bearer(user)).status_code == 200
        assert (
            client.post("/v1/ensemble/config", json={"note": "x"}, headers=_bearer(admin)).status_code == 200
        )

        # the CLI lists keys without showing them, and revokes by id
        monkeypatch.setenv("ENSEMBLEHUB_DATABASE_URL", own_database)
        assert cli_main(["keys", "list"]) == 0
        listing = capsys.readouterr().out
        assert "tenant=alice" in listing and "tenant=ops" in listing and user not in listing
        key_id = next(line.split()[0] for line in listing.splitlines() if "tenant=alice" in line)
        assert cli_main(["keys", "revoke", key_id]) == 0
        # the API process caches keys and hears the revocation a few milliseconds after its commit
        assert _status_within(client, "/v1/jobs", user, 401, seconds=1.0)
        assert cli_main(["keys", "create", "--tenant", "bad name!"]) == 2


def _status_within(client: TestClient, path: str, key: str, status: int, *, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if client.get(path, headers=_bearer(key)).status_code == status:
            return True
        time.sleep(0.005)
    return False


def test_key_lookups_are_cached_and_every_key_change_drops_them_at_once(own_database):
    """Cached answers (no query) while no key changes; a revocation by SQL, not through the
    CLI, a new key and the last key gone all take effect in well under a second."""
    alice, bob = _key(own_database, "alice"), _key(own_database, "bob")
    with _client(own_database) as client:
        cache = client.app.state.hub.api_keys
        assert _wait(lambda: cache.live, seconds=5), "the listener connects and finds the trigger"
        assert client.get("/v1/jobs", headers=_bearer(alice)).status_code == 200
        assert client.get("/v1/jobs").status_code == 401
        with _counting_queries(client.app.state.hub.db) as queries:
            for _ in range(5):
                assert client.get("/v1/jobs", headers=_bearer(alice)).status_code == 200
                assert client.get("/v1/jobs").status_code == 401, "no key at all: cached too"
        assert not any("FROM api_keys" in q for q in queries), queries

        db = Database(own_database)
        try:
            with db.engine.begin() as conn:  # by hand, not through the CLI
                conn.execute(text("UPDATE api_keys SET revoked_at = now() WHERE tenant = 'alice'"))
            started = time.monotonic()
            assert _status_within(client, "/v1/jobs", alice, 401, seconds=1.0)
            took = time.monotonic() - started
            assert client.get("/v1/jobs", headers=_bearer(bob)).status_code == 200
            assert client.get("/v1/jobs", headers=_bearer("whatever")).status_code == 401
            with db.engine.begin() as conn:
                conn.execute(text("DELETE FROM api_keys"))
            # no key left: back to the open mode (local machine), also heard at once
            assert _status_within(client, "/v1/jobs", "whatever", 200, seconds=1.0)
        finally:
            db.dispose()
        carol = _key(own_database, "carol")
        assert _status_within(client, "/v1/jobs", "whatever", 401, seconds=1.0), (
            "a new key ends the open mode"
        )
        assert client.get("/v1/jobs", headers=_bearer(carol)).status_code == 200
    assert took < 0.5, f"revocation took {took:.3f} s to take effect"


def test_without_the_listener_every_lookup_asks_the_database(own_database):
    alice, _bob = _key(own_database, "alice"), _key(own_database, "bob")
    with _client(own_database, api_key_cache_ttl_s=0) as client:
        assert not client.app.state.hub.api_keys.live
        assert client.get("/v1/jobs", headers=_bearer(alice)).status_code == 200
        db = Database(own_database)
        try:
            with db.engine.begin() as conn:
                conn.execute(text("UPDATE api_keys SET revoked_at = now() WHERE tenant = 'alice'"))
        finally:
            db.dispose()
        assert client.get("/v1/jobs", headers=_bearer(alice)).status_code == 401, "the very next request"


def _wait(predicate: Callable[[], bool], *, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@contextmanager
def _counting_queries(db: Database) -> Iterator[list[str]]:
    queries: list[str] = []

    def record(_conn, _cursor, statement, *_args) -> None:  # type: ignore[no-untyped-def]
        queries.append(statement)

    event.listen(db.engine, "before_cursor_execute", record)
    try:
        yield queries
    finally:
        event.remove(db.engine, "before_cursor_execute", record)


def test_the_rate_limit_is_per_tenant_with_retry_after(own_database):
    alice, bob = _key(own_database, "alice"), _key(own_database, "bob")
    with _client(own_database, rate_limit_requests=3, rate_limit_window_s=60) as client:
        for _ in range(3):
            assert client.get("/v1/jobs", headers=_bearer(alice)).status_code == 200
        limited = client.get("/v1/jobs", headers=_bearer(alice))
        assert limited.status_code == 429
        assert limited.json()["error"]["code"] == "rate_limit_exceeded"
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        assert client.get("/v1/jobs", headers=_bearer(bob)).status_code == 200, "another tenant's budget"


def test_caps_on_prompt_max_tokens_max_rounds_and_batch_size(own_database):
    caps = {"max_prompt_chars": 50, "max_tokens_limit": 8, "max_rounds_limit": 12, "max_batch_items": 2}
    with _client(own_database, **caps) as client:

        def error(resp):  # type: ignore[no-untyped-def]
            assert resp.status_code in (400, 413), resp.text
            return resp.status_code, resp.json()["error"]["code"], resp.json()["error"]["param"]

        chat = "/v1/chat/completions"
        assert error(client.post(chat, json={**PROMPT, "prompt": "x" * 51})) == (
            400,
            "prompt_too_long",
            "messages",
        )
        assert error(client.post(chat, json={**PROMPT, "max_tokens": 9})) == (
            400,
            "max_tokens_too_large",
            "max_tokens",
        )
        assert error(client.post(chat, json={**PROMPT, "max_rounds": 13})) == (
            400,
            "max_rounds_too_large",
            "max_rounds",
        )
        inference = client.post("/v1/ensemble/inference", json={"input": "hi", "max_tokens": 9})
        assert error(inference)[1] == "max_tokens_too_large"
        batch = {"examples": [{"input": "a"}, {"input": "b", "max_tokens": 9}], "max_tokens": 4}
        assert error(client.post("/v1/ensemble/batch", json=batch)) == (
            400,
            "max_tokens_too_large",
            "examples.1.max_tokens",
        )
        three = {"examples": [{"input": "a"}] * 3, "max_tokens": 4}
        assert error(client.post("/v1/ensemble/batch", json=three))[:2] == (413, "batch_too_large")
        config = client.post("/v1/ensemble/config", json={"default_ensemble_config": {"max_rounds": 13}})
        assert error(config) == (400, "max_rounds_too_large", "default_ensemble_config.max_rounds")
