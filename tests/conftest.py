"""One real stack per test session: migrated Postgres database, private Redis db, a Celery
worker process and the API over HTTP, serving two tiny random models (fast) unless a test
switches the config to the bundled SmolLM2. Shared by tests/integration and tests/contract.

Webhooks are on (a test secret; 127.0.0.1 allowed as a callback host; retries after 0.3, 0.6
and 1.2 s instead of minutes)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests import services
from tests.tiny_models import build_tiny_model

WEBHOOK_SECRET = "whsec_ZW5zZW1ibGVodWItdGVzdC13ZWJob29rLWtleS0zMmI="


@dataclass
class Stack:
    base_url: str
    database_url: str
    broker_url: str
    env: dict[str, str]
    api: services.Process
    worker: services.Process
    tiny_specs: list[dict]
    log_dir: Path
    webhook_secret: str = WEBHOOK_SECRET

    def client(self, timeout: float = 120) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=timeout)


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-models")
    return {
        "llama": build_tiny_model(root / "tiny-llama", arch="llama", vocab_seed=1),
        "gpt2": build_tiny_model(root / "tiny-gpt2", arch="gpt2", vocab_seed=2),
    }


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    with services.migrated_database() as url:
        yield url


@pytest.fixture(scope="session")
def broker_url() -> Iterator[str]:
    with services.private_redis_db() as url:
        yield url


@pytest.fixture(scope="session")
def stack(tiny_model_dirs, database_url, broker_url, tmp_path_factory) -> Iterator[Stack]:
    log_dir = tmp_path_factory.mktemp("logs")
    env = services.service_env(
        database_url,
        broker_url,
        ENSEMBLEHUB_WEBHOOK_SECRET=WEBHOOK_SECRET,
        ENSEMBLEHUB_WEBHOOK_ALLOWLIST="127.0.0.1",
        # remote scorers and openai members of tests call servers on this host
        ENSEMBLEHUB_OUTBOUND_ALLOWLIST="127.0.0.1",
        ENSEMBLEHUB_WEBHOOK_RETRY_SCHEDULE_S="0.3,0.6,1.2",
        # tests call the sweeper themselves and check what it did: the shared worker must not
        # sweep the shared database behind their back (tests/faults run the in-worker schedule)
        ENSEMBLEHUB_SWEEP_IN_WORKERS="false",
        # tiny models decode 32 tokens in well under the default 30 ms coalescing window: publish
        # every token so that streaming tests see token-by-token chunks
        ENSEMBLEHUB_STREAM_COALESCE_S="0",
    )
    tiny_specs = [
        {"path": str(tiny_model_dirs["llama"]), "engine": "hf", "device": "cpu", "name": "tiny-llama"},
        {"path": str(tiny_model_dirs["gpt2"]), "engine": "hf", "device": "cpu", "name": "tiny-gpt2"},
    ]
    worker = services.start_worker(env, log_dir)
    api, base = services.start_api(
        env,
        log_dir,
        [
            "--model_specs",
            json.dumps(tiny_specs),
            "--model_selection_method",
            "all",
            "--ensemble_method",
            "loop",
            "--max_rounds",
            "4",
        ],
    )
    stack = Stack(base, database_url, broker_url, env, api, worker, tiny_specs, log_dir)
    try:
        services.wait_for_worker(base, worker)
        yield stack
    finally:
        api.stop()
        worker.stop()


@pytest.fixture
def show_logs_on_failure(request, stack):  # type: ignore[no-untyped-def]
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print("---- worker log ----\n" + stack.worker.log())
        print("---- api log ----\n" + stack.api.log())


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):  # type: ignore[no-untyped-def]
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
