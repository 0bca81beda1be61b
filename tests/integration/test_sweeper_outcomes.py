"""The sweeper keeps batch counters and webhook events right: a job failed for a dead worker
counts in its batch (and may finish it), and a webhook attempt whose task was lost is sent."""

from __future__ import annotations

from datetime import timedelta

import pytest

from jobqueue.celery_config import make_celery
from jobqueue.settings import QueueSettings
from jobqueue.webhook_events import envelope, new_event_id
from persistence import batch_repository, repository, webhook_repository
from persistence.db import Database
from persistence.models import Job, new_id, utcnow
from tests.webhook_receiver import webhook_receiver
from workers.settings import WorkerSettings
from workers.sweeper import sweep

pytestmark = pytest.mark.usefixtures("show_logs_on_failure")


@pytest.fixture
def db(stack):
    database = Database(stack.database_url)
    yield database
    database.dispose()


def test_a_job_failed_for_a_dead_worker_finishes_its_batch_and_sends_the_batch_event(stack, db):
    celery = make_celery(QueueSettings(broker_url=stack.broker_url))
    with webhook_receiver() as receiver:
        batch_id, job_id = new_id("batch"), new_id("job")
        with db.transaction() as session:
            batch_repository.create_batch(session, batch_id=batch_id, total=1, webhook_url=receiver.url)
            batch_repository.insert_batch_jobs(
                session,
                [{"id": job_id, "kind": "batch_item", "request": {}, "batch_id": batch_id, "batch_index": 0}],
            )
            batch_repository.mark_batch_enqueued(session, batch_id, [job_id])
            long_ago = utcnow() - timedelta(minutes=10)
            job = session.get(Job, job_id)
            job.status, job.attempts, job.started_at, job.heartbeat_at = "running", 3, long_ago, long_ago
        report = sweep(db, celery, WorkerSettings(max_attempts=3, job_dead_after_s=30))
        assert job_id in report.failed
        with db.transaction() as session:
            batch = batch_repository.get_batch(session, batch_id)
            assert (batch.status, batch.failed, batch.completed) == ("completed", 1, 0)
        [hit] = receiver.wait_for(1)
    assert b'"batch.completed"' in hit.body


def test_a_pending_attempt_whose_task_was_lost_is_sent_by_the_sweeper(stack, db):
    celery = make_celery(QueueSettings(broker_url=stack.broker_url))
    with webhook_receiver() as receiver:
        with db.transaction() as session:
            job = repository.create_job(session, kind="chat", request={}, config_version_id=None)
            job.status = "succeeded"  # a finished job: nothing for the sweeper to send but its event
            event_id = new_event_id()
            delivery = webhook_repository.add_delivery(
                session,
                event_id=event_id,
                event_type="job.succeeded",
                url=receiver.url,
                payload=envelope(event_id, "job.succeeded", {"id": job.id}),
                job_id=job.id,
                scheduled_at=utcnow() - timedelta(minutes=5),
            )
            delivery_id = delivery.id
        report = sweep(db, celery, WorkerSettings(webhook_stale_after_s=60))
        assert str(delivery_id) in report.webhooks
        [hit] = receiver.wait_for(1)
    assert hit.headers["webhook-id"] == event_id
