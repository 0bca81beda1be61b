"""One keyed stack for the fault tests: its own Redis server (killable), its own Postgres
database on the shared cluster, two workers, beat and the API; keys for the tenants
``alice`` and ``bob`` and the admin ``ops``. The Postgres restart test builds its own
cluster (see ``test_postgres_restart.py``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import services
from tests.faults import infra


@pytest.fixture(scope="session")
def tiny_specs(tiny_model_dirs) -> list[dict]:
    return [
        {"path": str(tiny_model_dirs["llama"]), "engine": "hf", "device": "cpu", "name": "tiny-llama"},
        {"path": str(tiny_model_dirs["gpt2"]), "engine": "hf", "device": "cpu", "name": "tiny-gpt2"},
    ]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator[infra.RedisServer]:
    server = infra.RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def fault_stack(tiny_specs, redis_server, tmp_path_factory) -> Iterator[infra.FaultStack]:
    with services.migrated_database() as database_url:
        stack = infra.start_stack(
            database_url, redis_server.url(0), tiny_specs, tmp_path_factory.mktemp("fault-logs")
        )
        try:
            yield stack
        finally:
            stack.stop()


@pytest.fixture
def fault_logs_on_failure(request, fault_stack):  # type: ignore[no-untyped-def]
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(fault_stack.logs())


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    if infra.REPORTS:
        terminalreporter.section("fault tests: what was tried, what was lost")
        for block in infra.REPORTS:
            terminalreporter.write_line(block)
