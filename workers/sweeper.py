"""The periodic sweeper (run by Celery beat): no accepted job is ever lost.

- queued jobs that never reached the broker, or whose message was lost, are sent (again);
  a duplicate message is harmless because the claim is a conditional update. A broker that
  lost its data (Redis restarted empty) is noticed by a missing marker key
  (``jobqueue.broker_marker``): then every queued job is sent again at once;
- running jobs whose heartbeat stopped (their worker died: OOM, kill -9, preemption) go back
  to the queue, or fail for good with ``worker_lost`` after ``max_attempts`` attempts;
- webhook attempts that were due a while ago but never picked up are sent again (a
  duplicate is harmless: an attempt is claimed once), and attempts stuck in ``sending``
  (their worker died mid-POST) go back to pending and are sent again (at least once).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from celery import Celery

from jobqueue.broker_marker import broker_lost_messages, set_broker_marker
from jobqueue.celery_config import enqueue_jobs, enqueue_webhooks
from jobqueue.webhook_events import record_settlement_events
from persistence import recovery, webhook_repository
from persistence.db import Database
from workers.settings import WorkerSettings

log = logging.getLogger(__name__)


@dataclass
class SweepReport:
    sent: list[str] = field(default_factory=list)
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    webhooks: list[str] = field(default_factory=list)
    # queued jobs whose message the broker lost when it restarted empty
    resent_after_broker_loss: int = 0

    def as_dict(self) -> dict[str, list[str]]:
        return {
            "sent": self.sent,
            "requeued": self.requeued,
            "failed": self.failed,
            "webhooks": self.webhooks,
        }


SEND_CHUNK = 500


def sweep(db: Database, celery: Celery, settings: WorkerSettings) -> SweepReport:
    report = SweepReport()
    broker_url = str(celery.conf.broker_url or "")
    if broker_lost_messages(broker_url):
        with db.transaction() as session:
            report.resent_after_broker_loss = recovery.forget_sends(session)
        # set only now: should the line above fail, the next sweep still sees the loss
        set_broker_marker(broker_url)
    with db.transaction() as session:
        orphans = [
            (j.id, j.attempts)
            for j in recovery.orphaned_running_jobs(session, dead_after_s=settings.job_dead_after_s)
        ]
    deliveries: list[int] = []
    for job_id, attempts in orphans:
        with db.transaction() as session:
            if attempts >= settings.max_attempts:
                message = f"the worker running this job stopped responding {attempts} times; giving up"
                settled = recovery.fail_orphan(
                    session, job_id, dead_after_s=settings.job_dead_after_s, message=message
                )
                if settled is not None:
                    report.failed.append(job_id)
                    # the job's (and, if it was the last item, its batch's) webhook events
                    deliveries += record_settlement_events(session, [settled])
            elif recovery.requeue_orphan(session, job_id, dead_after_s=settings.job_dead_after_s):
                report.requeued.append(job_id)
    with db.transaction() as session:
        # a webhook worker killed mid-POST left its attempt in `sending`: back to pending
        released = list(
            webhook_repository.release_stuck_sending(session, stuck_after_s=settings.webhook_stuck_after_s)
        )
    with db.transaction() as session:
        stale = list(
            webhook_repository.stale_pending_deliveries(session, grace_s=settings.webhook_stale_after_s)
        )
    stale = sorted(set(stale) | set(released))
    if deliveries or stale:
        enqueue_webhooks(celery, deliveries + stale)
        report.webhooks += [str(d) for d in stale]
    with db.transaction() as session:
        to_send = list(
            recovery.jobs_to_send(
                session, unsent_grace_s=settings.unsent_grace_s, resend_after_s=settings.resend_after_s
            )
        )
    for start in range(0, len(to_send), SEND_CHUNK):
        chunk = to_send[start : start + SEND_CHUNK]
        with db.transaction() as session:
            queues = recovery.job_queues(session, chunk)
        enqueue_jobs(celery, chunk, queues=queues)  # raises while the broker is down: the next sweep retries
        with db.transaction() as session:
            recovery.mark_sent(session, chunk)
        report.sent += chunk
    if report.sent or report.requeued or report.failed or report.webhooks:
        log.warning(
            "sweep: %s (resent after broker data loss: %d)",
            {k: len(v) for k, v in report.as_dict().items()},
            report.resent_after_broker_loss,
        )
    return report
