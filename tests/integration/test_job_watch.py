"""The worker process's job watch (workers/job_watch.py) on real Postgres and Redis, no worker
process: a cancel published on the cancels channel stops the registered job; one heartbeat
statement beats every claimed job; a job cancelled or re-queued in the database is stopped at
the next beat, also while the watch cannot reach Redis."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, update

from ensemble_core.stopping import CANCELLED, StopSignal
from jobqueue.events import RedisJobEventBus
from persistence import recovery, repository
from persistence.db import Database
from persistence.models import Job, utcnow
from tests import services
from workers.job_watch import JobWatch, WatchedJob


@pytest.fixture(scope="module")
def db() -> Iterator[Database]:
    with services.migrated_db() as database:
        yield database


@pytest.fixture(scope="module")
def bus() -> Iterator[RedisJobEventBus]:
    with services.private_redis_db() as url:
        yield RedisJobEventBus(url)


@pytest.fixture
def watches() -> Iterator[list[JobWatch]]:
    started: list[JobWatch] = []
    yield started
    for watch in started:
        watch.stop()


def _watch(watches: list[JobWatch], db: Database, bus: Any, interval: float = 60.0) -> JobWatch:
    watch = JobWatch(db, bus, heartbeat_interval_s=interval)
    watch.start()
    watches.append(watch)
    return watch


def _running_job(db: Database, watch: JobWatch) -> tuple[WatchedJob, StopSignal]:
    """A job registered with the watch, then claimed, as run_job does."""
    with db.transaction() as s:
        job_id = repository.create_job(s, kind="chat", request={}, config_version_id=None).id
    watched = watch.register(job_id)
    with db.transaction() as s:
        claim = repository.claim_job(s, job_id, worker="w1")
    assert claim is not None
    signal = StopSignal()
    watch.claimed(watched, claim.attempts, signal)
    return watched, signal


def _stopped_within(signal: StopSignal, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if signal.requested():
            return True
        time.sleep(0.01)
    return signal.requested()


def test_a_cancel_published_after_the_claim_stops_only_that_job(db, bus, watches):
    watch = _watch(watches, db, bus)
    (cancelled, signal), (_other, other_signal) = _running_job(db, watch), _running_job(db, watch)
    started = time.monotonic()
    bus.publish_cancels([cancelled.job_id])
    assert _stopped_within(signal, 1.0), "the cancel was not heard"
    assert signal.reason == CANCELLED
    assert time.monotonic() - started < 1.0
    time.sleep(0.1)
    assert not other_signal.requested(), "a job nobody cancelled was stopped"


def test_a_cancel_heard_between_the_claim_and_the_signal_still_stops_the_job(db, bus, watches):
    watch = _watch(watches, db, bus)
    with db.transaction() as s:
        job_id = repository.create_job(s, kind="chat", request={}, config_version_id=None).id
    watched = watch.register(job_id)
    bus.publish_cancels([job_id])
    time.sleep(0.3)  # heard before the job hands its signal over
    signal = StopSignal()
    watch.claimed(watched, 1, signal)
    assert signal.requested()


@contextmanager
def _job_updates(db: Database) -> Iterator[list[str]]:
    """The statements that update jobs run meanwhile."""
    statements: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany):
        if "UPDATE JOBS" in statement.upper():
            statements.append(statement)

    event.listen(db.engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        event.remove(db.engine, "before_cursor_execute", count)


def test_one_heartbeat_statement_beats_every_claimed_job(db, bus, watches):
    watch = _watch(watches, db, bus)
    jobs = [_running_job(db, watch)[0] for _ in range(5)]
    with db.transaction() as s:
        unclaimed = repository.create_job(s, kind="chat", request={}, config_version_id=None).id
    watch.register(unclaimed)  # registered before its claim: not beaten yet
    stale = utcnow() - timedelta(seconds=60)
    with db.transaction() as s:
        s.execute(update(Job).where(Job.id.in_([w.job_id for w in jobs])).values(heartbeat_at=stale))

    with _job_updates(db) as statements:
        watch.beat_once()
    assert len(statements) == 1, statements
    with db.transaction() as s:
        beats = {repository.get_job(s, w.job_id).heartbeat_at for w in jobs}
        assert all(b > stale + timedelta(seconds=50) for b in beats), beats
        assert repository.get_job(s, unclaimed).status == "queued"


def test_a_job_cancelled_or_requeued_in_the_database_stops_at_the_next_beat(db, bus, watches):
    watch = _watch(watches, db, bus, interval=0.2)
    (cancelled, cancelled_signal), (requeued, requeued_signal), (_alive, alive_signal) = (
        _running_job(db, watch) for _ in range(3)
    )
    with db.transaction() as s:
        assert repository.cancel_job(s, cancelled.job_id) is not None  # no event published
        s.execute(
            update(Job).where(Job.id == requeued.job_id).values(heartbeat_at=utcnow() - timedelta(seconds=60))
        )
        assert recovery.requeue_orphan(s, requeued.job_id, dead_after_s=30)
    with db.transaction() as s:
        assert repository.claim_job(s, requeued.job_id, worker="w2").attempts == 2  # type: ignore[union-attr]

    assert _stopped_within(cancelled_signal, 2.0), "a cancel in the row was not noticed"
    assert _stopped_within(requeued_signal, 2.0), "an attempt fenced off kept running"
    assert not alive_signal.requested()
    with _job_updates(db) as statements:
        time.sleep(0.5)
    assert statements, "the live job is still beaten"
    with db.transaction() as s:  # the fenced attempt no longer touches the new attempt's row
        assert repository.get_job(s, requeued.job_id).worker == "w2"


class _DroppingSubscription:
    """A real subscription whose connection drops on the first read (Redis restarting)."""

    def __init__(self, subscription: Any) -> None:
        self._subscription, self._dropped = subscription, False

    def get(self, timeout: float) -> dict[str, Any] | None:
        if not self._dropped:
            self._dropped = True
            raise ConnectionError("Connection closed by server.")
        return self._subscription.get(timeout)

    def close(self) -> None:
        self._subscription.close()


class _FlakyBus:
    """Redis whose first cancel subscription drops, and which refuses ``refusals`` more."""

    def __init__(self, bus: RedisJobEventBus, refusals: int) -> None:
        self._bus, self._refusals, self.subscriptions = bus, refusals, 0

    def subscribe_cancels(self) -> Any:
        self.subscriptions += 1
        if self.subscriptions == 1:
            return _DroppingSubscription(self._bus.subscribe_cancels())
        if self._refusals > 0:
            self._refusals -= 1
            raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
        return self._bus.subscribe_cancels()


def test_without_redis_a_cancel_is_noticed_by_the_heartbeat(db, watches):
    watch = _watch(watches, db, RedisJobEventBus("redis://127.0.0.1:1/15"), interval=0.3)
    watched, signal = _running_job(db, watch)
    with db.transaction() as s:
        assert repository.cancel_job(s, watched.job_id) is not None
    assert _stopped_within(signal, 2.0)


def test_a_dropped_cancel_subscription_is_opened_again(db, bus, watches):
    flaky = _FlakyBus(bus, refusals=1)
    watch = _watch(watches, db, flaky, interval=0.3)
    dropped, dropped_signal = _running_job(db, watch)
    # while the subscription is down, the heartbeat notices a cancel
    with db.transaction() as s:
        assert repository.cancel_job(s, dropped.job_id) is not None
    assert _stopped_within(dropped_signal, 2.0)
    # then the watch subscribes again (after one refusal and its backoff) and hears cancels
    deadline = time.monotonic() + 5
    while flaky.subscriptions < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert flaky.subscriptions == 3
    watched, signal = _running_job(db, watch)
    time.sleep(0.3)  # the row stays running: this cancel can only come from Redis
    bus.publish_cancels([watched.job_id])
    assert _stopped_within(signal, 1.0)
