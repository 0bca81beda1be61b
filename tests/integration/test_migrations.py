"""Alembic from an empty database, and the models match the migrations."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.services import ROOT


def test_upgrade_head_on_an_empty_database_then_check(database_url):
    # the session database was created empty and upgraded by the fixture; `alembic check`
    # fails when the ORM models and the migrations disagree
    env = {**os.environ, "ENSEMBLEHUB_DATABASE_URL": database_url}
    out = subprocess.run(
        [sys.executable, "-m", "alembic", "check"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "No new upgrade operations detected" in out.stdout + out.stderr


def test_migrate_command_creates_a_missing_database():
    import uuid

    from sqlalchemy import create_engine, inspect

    from persistence.db import drop_database
    from tests.services import PG_ADMIN_URL

    url = f"{PG_ADMIN_URL}/ehub_test_migrate_{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "ENSEMBLEHUB_DATABASE_URL": url}
    try:
        out = subprocess.run(
            [sys.executable, "-m", "ensemblehub.cli", "migrate"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        assert "created database" in out.stdout
        engine = create_engine(url)
        tables = set(inspect(engine).get_table_names())
        engine.dispose()
        assert {"jobs", "batches", "config_versions", "webhook_deliveries"} <= tables
    finally:
        drop_database(url)
