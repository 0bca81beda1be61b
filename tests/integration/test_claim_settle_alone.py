"""The worker's claim and settlement as statements of their own (autocommit), built once.

A claim, and the settlement of a job outside a batch without a webhook, are one statement
each: they run on an autocommit connection (no BEGIN/COMMIT round trips) and still claim once,
fence a stale attempt and count once. A job with a webhook keeps its transaction, so its
event row commits with the state change. Real Postgres; the worker's functions without models."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from types import SimpleNamespace

import pytest
from sqlalchemy import event, select, update
from sqlalchemy.engine.default import CACHE_HIT

from ensemble_core.stopping import StopSignal
from persistence import job_statements, recovery, repository, webhook_repository
from persistence.db import Database
from persistence.models import Job, MetricCounter, utcnow
from tests import services
from workers import job_runner
from workers.runtime import ConfigVersionCache
from workers.settings import WorkerSettings

FINISHED = '{"state":"succeeded"}'


@pytest.fixture(scope="module")
def db() -> Iterator[Database]:
    with services.migrated_db() as database:
        yield database


@pytest.fixture
def runtime(db):  # type: ignore[no-untyped-def]
    return SimpleNamespace(
        db=db, hostname="test:1", settings=WorkerSettings(), config_versions=ConfigVersionCache()
    )


@pytest.fixture
def sent(db) -> Iterator[list[tuple[str, bool, object]]]:  # type: ignore[no-untyped-def]
    """(statement, whether its connection was in autocommit, compiled-cache outcome) sent."""
    seen: list[tuple[str, bool, object]] = []

    def listen(conn, _cursor, statement, _params, context, _many):  # type: ignore[no-untyped-def]
        seen.append((statement, conn.connection.dbapi_connection.autocommit, context.cache_hit))

    event.listen(db.engine, "before_cursor_execute", listen)
    yield seen
    event.remove(db.engine, "before_cursor_execute", listen)


def _job(db: Database, **fields: object) -> str:
    with db.transaction() as s:
        spec = repository.append_config_version(s, spec={"model_specs": []}, content_hash="0" * 64)
        return repository.create_job(s, kind="chat", request={"n": 1}, config_version_id=spec.id, **fields).id


def _counter(db: Database, name: str, labels: str) -> float:
    with db.transaction() as s:
        value = s.scalar(
            select(MetricCounter.value).where(MetricCounter.name == name, MetricCounter.labels == labels)
        )
    return float(value or 0.0)


def _result(text: str) -> dict:
    return {"text": text, "usage": {"per_model": {"m": {"generated": 3}}}}


def test_claim_and_settlement_are_one_autocommit_statement_each_built_once(db, runtime, sent):
    for n in range(2):
        job_id = _job(db)
        before = _counter(db, "jobs_finished", FINISHED)
        sent.clear()
        claim, spec = job_runner._claim(runtime, job_id)
        assert spec == {"model_specs": []} and claim.attempts == 1
        assert job_runner._claim(runtime, job_id) is None  # a second delivery: claimed once
        status, deliveries = job_runner._store(
            runtime, job_id, 1, _result(f"r{n}"), StopSignal(), claim=claim
        )
        assert (status, deliveries) == ("succeeded", [])
        assert _counter(db, "jobs_finished", FINISHED) == before + 1
        ours = [(autocommit, hit) for statement, autocommit, hit in sent if "UPDATE jobs" in statement]
        # claim, the second claim, the settlement: each alone in its transaction, and the
        # second job's statements come from the compiled cache
        assert [autocommit for autocommit, _ in ours] == [True, True, True]
        if n:
            assert all(hit == CACHE_HIT for _, hit in ours)
    assert job_statements.transition_with_counters.cache_info().currsize >= 1
    with db.transaction() as s:
        job = repository.get_job(s, job_id)
        assert (job.status, job.result["text"], job.worker, job.attempts) == ("succeeded", "r1", "test:1", 1)


def test_a_stale_attempt_settling_alone_writes_and_counts_nothing(db, runtime):
    job_id = _job(db)
    stale, _ = job_runner._claim(runtime, job_id)
    with db.transaction() as s:
        s.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow() - timedelta(seconds=60)))
        assert recovery.requeue_orphan(s, job_id, dead_after_s=30)
    current, _ = job_runner._claim(runtime, job_id)
    assert (stale.attempts, current.attempts) == (1, 2)
    before = _counter(db, "jobs_finished", FINISHED)
    stored = job_runner._store(runtime, job_id, stale.attempts, _result("stale"), StopSignal(), claim=stale)
    assert stored == ("skipped", [])
    assert _counter(db, "jobs_finished", FINISHED) == before
    failed = job_runner._fail(runtime, job_id, stale.attempts, "internal_error", "late", claim=stale)
    assert failed == ("skipped", [])
    assert _counter(db, "jobs_finished", FINISHED) == before
    stored = job_runner._store(runtime, job_id, current.attempts, _result("now"), StopSignal(), claim=current)
    assert stored == ("succeeded", [])
    assert _counter(db, "jobs_finished", FINISHED) == before + 1


def test_a_job_with_a_webhook_settles_in_a_transaction_with_its_event_row(db, runtime, sent):
    job_id = _job(db, webhook_url="http://127.0.0.1:9/hook")
    claim, _ = job_runner._claim(runtime, job_id)
    sent.clear()
    status, deliveries = job_runner._store(runtime, job_id, 1, _result("hooked"), StopSignal(), claim=claim)
    assert status == "succeeded" and len(deliveries) == 1
    assert sent and not any(autocommit for _, autocommit, _ in sent)
    with db.transaction() as s:
        row = webhook_repository.get_delivery(s, deliveries[0])
        assert (row.job_id, row.event_type, row.payload["data"]["status"]) == (
            job_id,
            "job.succeeded",
            "succeeded",
        )


def test_the_pool_connection_leaves_autocommit_after_a_statement(db, runtime):
    """The autocommit connection goes back to the pool as it came: the next transaction on it
    (here a rolled-back one) is a transaction again."""
    job_id = _job(db)
    job_runner._claim(runtime, job_id)
    with pytest.raises(RuntimeError), db.transaction() as s:
        s.execute(update(Job).where(Job.id == job_id).values(worker="rolled-back"))
        raise RuntimeError
    with db.transaction() as s:
        assert repository.get_job(s, job_id).worker == "test:1"


def test_a_database_blip_after_the_claim_retries_the_config_read_not_the_claim(db, runtime, monkeypatch):
    """The claim commits on its own; a config version read that fails then is retried alone, so
    the worker keeps its claim (a retried claim would find the job taken and skip it)."""
    from sqlalchemy.exc import OperationalError

    job_id = _job(db)
    real_get, calls = runtime.config_versions.get, []

    def flaky_get(session, version_id):  # type: ignore[no-untyped-def]
        calls.append(version_id)
        if len(calls) == 1:
            raise OperationalError("SELECT", {}, Exception("server closed the connection"))
        return real_get(session, version_id)

    monkeypatch.setattr(runtime.config_versions, "get", flaky_get)
    claimed = job_runner.with_database_retry(runtime, "claim", lambda: job_runner._claim(runtime, job_id))
    assert claimed is not None
    claim, spec = claimed
    assert (claim.attempts, spec, len(calls)) == (1, {"model_specs": []}, 2)
