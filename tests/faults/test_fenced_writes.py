"""A worker the sweeper gave up on (a database outage longer than its retry window, a long GC
pause) may wake up and write: its heartbeat, result and failure carry its attempt and change
nothing once the job belongs to a newer attempt. Real Postgres, no processes."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import update

from persistence import recovery, repository
from persistence.db import Database
from persistence.models import Job, utcnow
from tests import services
from workers.settings import WorkerSettings


@pytest.fixture
def db() -> Iterator[Database]:
    with services.migrated_db() as database:
        yield database


def test_a_stale_attempt_cannot_overwrite_the_current_one(db):
    with db.transaction() as s:
        job_id = repository.create_job(s, kind="chat", request={}, config_version_id=None).id
    with db.transaction() as s:
        first = repository.claim_job(s, job_id, worker="w1").attempts
    # w1 stops beating (database outage on its side); the sweeper re-queues, w2 claims
    with db.transaction() as s:
        s.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow() - timedelta(seconds=60)))
        assert recovery.requeue_orphan(s, job_id, dead_after_s=30)
    with db.transaction() as s:
        second = repository.claim_job(s, job_id, worker="w2").attempts
    assert (first, second) == (1, 2)

    with db.transaction() as s:
        assert repository.heartbeat_job(s, job_id, attempt=first) is False, "w1 must not look alive"
        assert repository.finish_job(s, job_id, result={"text": "stale"}, usage=None, attempt=first) is None
        assert repository.fail_job(s, job_id, code="internal_error", message="x", attempt=first) is None
    with db.transaction() as s:
        assert repository.heartbeat_job(s, job_id, attempt=second) is True
        assert repository.finish_job(s, job_id, result={"text": "current"}, usage=None, attempt=second)
    with db.transaction() as s:
        job = repository.get_job(s, job_id)
        assert (job.status, job.result, job.attempts, job.worker) == (
            "succeeded",
            {"text": "current"},
            2,
            "w2",
        )


def test_the_dead_threshold_must_exceed_the_database_retry_window():
    with pytest.raises(ValueError, match="must exceed ENSEMBLEHUB_DATABASE_RETRY_S"):
        WorkerSettings(job_dead_after_s=30, database_retry_s=120)
    defaults = WorkerSettings()
    assert defaults.job_dead_after_s > defaults.database_retry_s


def test_a_webhook_attempt_stuck_in_sending_is_sent_again_and_the_old_sender_is_fenced(db):
    from persistence import webhook_repository
    from persistence.models import WebhookDelivery

    with db.transaction() as s:
        job_id = repository.create_job(s, kind="chat", request={}, config_version_id=None).id
        delivery = webhook_repository.add_delivery(
            s,
            event_id="evt_1",
            event_type="job.succeeded",
            url="http://example.com/h",
            payload={},
            job_id=job_id,
        ).id
    with db.transaction() as s:
        assert webhook_repository.claim_delivery(s, delivery) is not None
    # the webhook worker is killed mid-POST: nothing finishes the attempt
    with db.transaction() as s:
        assert webhook_repository.release_stuck_sending(s, stuck_after_s=60) == [], "not stuck yet"
        old_claim = utcnow() - timedelta(seconds=120)
        s.execute(update(WebhookDelivery).where(WebhookDelivery.id == delivery).values(started_at=old_claim))
    with db.transaction() as s:
        assert webhook_repository.release_stuck_sending(s, stuck_after_s=60) == [delivery]
    with db.transaction() as s:
        new_claim = webhook_repository.claim_delivery(s, delivery).started_at
    with db.transaction() as s:  # the old sender wakes up: its outcome is dropped
        webhook_repository.finish_delivery(s, delivery, status="failed", error="late", claimed_at=old_claim)
    with db.transaction() as s:
        assert webhook_repository.get_delivery(s, delivery).status == "sending"
        webhook_repository.finish_delivery(
            s, delivery, status="delivered", response_status=204, claimed_at=new_claim
        )
    with db.transaction() as s:
        row = webhook_repository.get_delivery(s, delivery)
        assert (row.status, row.response_status, row.error) == ("delivered", 204, None)
