"""A keyed stack for the attack tests: its own Postgres database and Redis db, a real worker
process, the API in-process, an admin key and a tenant key.

The admin's config version has two tiny members and one named scorer, ``judge``: a remote
scorer on a local listener. Attack tests send what a tenant must not, and prove with their
own listener (no connection) or a marker file (no code ran) that nothing happened."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.settings import ApiSettings
from ensemble_core.spec import EnsembleConfig, EnsembleSpec, ModelSpec
from jobqueue.settings import QueueSettings
from persistence import api_key_repository
from persistence.db import Database
from persistence.settings import DatabaseSettings
from tests import services
from tests.security.listener import Listener, listener


@dataclass
class Hub:
    client: TestClient
    admin: dict[str, str]
    tenant: dict[str, str]
    judge: Listener
    worker: services.Process
    database_url: str


def _key(database_url: str, tenant: str, *, admin: bool) -> dict[str, str]:
    db = Database(database_url)
    try:
        with db.transaction() as session:
            _row, token = api_key_repository.create_api_key(session, tenant=tenant, admin=admin)
    finally:
        db.dispose()
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="session")
def hub(tiny_model_dirs, tmp_path_factory) -> Iterator[Hub]:
    log_dir = tmp_path_factory.mktemp("security-logs")
    with services.migrated_database() as db_url, services.private_redis_db() as broker, listener() as judge:
        spec = EnsembleSpec(
            model_specs=[
                ModelSpec(path=str(tiny_model_dirs["llama"]), name="tiny-llama"),
                ModelSpec(path=str(tiny_model_dirs["gpt2"]), name="tiny-gpt2"),
            ],
            default_ensemble_config=EnsembleConfig(
                model_selection_method="all", ensemble_method="loop", max_rounds=2
            ),
            scorers={"judge": {"type": "remote", "url": judge.url, "retries": 0}},
        )
        # the admin's judge listens on 127.0.0.1: allowlisted as an admin would (url_policy)
        env = services.service_env(db_url, broker, ENSEMBLEHUB_OUTBOUND_ALLOWLIST="127.0.0.1")
        worker = services.start_worker(env, log_dir, name="sec")
        app = create_app(
            ApiSettings(),
            queue_settings=QueueSettings(broker_url=broker),
            database_settings=DatabaseSettings(database_url=db_url),
            startup_spec=spec,
        )
        admin, tenant = _key(db_url, "ops", admin=True), _key(db_url, "alice", admin=False)
        try:
            with TestClient(app, client=("127.0.0.1", 40000)) as client:
                deadline = time.monotonic() + 60
                while not client.get("/status", headers=admin).json().get("workers"):
                    assert worker.alive() and time.monotonic() < deadline, worker.log()
                    time.sleep(0.3)
                yield Hub(client, admin, tenant, judge, worker, db_url)
        finally:
            worker.stop()


@pytest.fixture
def evil_model(tmp_path: Path) -> tuple[Path, Path]:
    """A model folder whose custom code writes a marker file when imported
    (``trust_remote_code``); returns (folder, marker)."""
    marker = tmp_path / "remote-code-ran"
    folder = tmp_path / "evil-model"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps(
            {
                "model_type": "evil",
                "auto_map": {
                    "AutoConfig": "evil.EvilConfig",
                    "AutoModelForSequenceClassification": "evil.EvilModel",
                },
            }
        )
    )
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    return folder, marker
