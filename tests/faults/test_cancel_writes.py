"""What a worker writes when its job is cancelled or runs out of time: the partial answer goes
into the cancelled row once, by the attempt that ran, and a cancel that comes as the job
finishes keeps the whole answer. Real Postgres, no processes."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from ensemble_core.stopping import StopSignal
from persistence import repository
from persistence.db import Database
from tests import services
from workers.job_runner import _store
from workers.settings import WorkerSettings

PAYLOAD = {"text": "Once upon", "stop_reason": "cancelled", "usage": {"completion_tokens": 2}}


@pytest.fixture
def db() -> Iterator[Database]:
    with services.migrated_db() as database:
        yield database


def _running_job(db: Database) -> tuple[str, int]:
    with db.transaction() as s:
        job_id = repository.create_job(s, kind="chat", request={}, config_version_id=None).id
    with db.transaction() as s:
        return job_id, repository.claim_job(s, job_id, worker="w1").attempts


def _row(db: Database, job_id: str):  # type: ignore[no-untyped-def]
    with db.transaction() as s:
        job = repository.get_job(s, job_id)
        s.expunge(job)
        return job


def test_a_cancelled_jobs_partial_answer_is_stored_once_by_its_attempt(db):
    runtime = SimpleNamespace(db=db, settings=WorkerSettings())
    job_id, attempt = _running_job(db)
    with db.transaction() as s:
        assert repository.cancel_job(s, job_id) is not None
    stop = StopSignal()
    stop.cancel()
    assert stop.requested()
    assert _store(runtime, job_id, attempt + 1, PAYLOAD, stop) == ("skipped", [])  # not its attempt
    assert _store(runtime, job_id, attempt, PAYLOAD, stop) == ("cancelled", [])
    assert _store(runtime, job_id, attempt, {**PAYLOAD, "text": "again"}, stop) == ("skipped", [])
    job = _row(db, job_id)
    assert (job.status, job.result["text"], job.usage) == ("cancelled", "Once upon", {"completion_tokens": 2})


def test_a_cancel_as_the_job_finishes_keeps_the_whole_answer(db):
    runtime = SimpleNamespace(db=db, settings=WorkerSettings())
    job_id, attempt = _running_job(db)
    with db.transaction() as s:
        repository.cancel_job(s, job_id)  # the worker never heard it: its run ended first
    whole = {**PAYLOAD, "text": "Once upon a time.", "stop_reason": "eos"}
    assert _store(runtime, job_id, attempt, whole, StopSignal()) == ("cancelled", [])
    job = _row(db, job_id)
    assert (job.status, job.result["text"]) == ("cancelled", "Once upon a time.")


def test_past_the_deadline_the_job_fails_with_its_own_code_and_keeps_the_partial_answer(db):
    runtime = SimpleNamespace(db=db, settings=WorkerSettings())
    job_id, attempt = _running_job(db)
    clock = itertools.count()
    stop = StopSignal(deadline_s=1, clock=lambda: float(next(clock)))
    assert stop.requested() and stop.reason == "deadline_exceeded"
    payload = {**PAYLOAD, "stop_reason": "deadline_exceeded", "timings": {"model_ms": 1000.0}}
    status, _ = _store(runtime, job_id, attempt, payload, stop)
    job = _row(db, job_id)
    assert (status, job.status, job.error_code) == ("failed", "failed", "deadline_exceeded")
    assert job.result["text"] == "Once upon" and job.usage == {"completion_tokens": 2}
    assert "deadline" in job.error_message and "2 tokens" in job.error_message
