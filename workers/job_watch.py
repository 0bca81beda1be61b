"""One watch over all the jobs a worker process runs: it hears their cancels and beats for them.

A running job needs two things from outside its engine: to stop when the API cancels it, and
a heartbeat in its row, so the sweeper does not take it for the job of a dead worker. Both used
to cost a job its own Redis subscription (opened before the claim: ~1.1 ms per job) and two
threads (~0.4 ms to start), and 64 concurrent jobs meant 64 ORM updates and 64 polling threads
taking the GIL from the decode loop. A :class:`JobWatch` does it once per process:

- cancels: one subscription to the cancels channel (the API publishes every cancel's job id
  there, ``jobqueue.events.publish_cancels``), opened and confirmed by Redis when the watch
  starts, before its first job registers; a dropped connection is opened again with backoff;
- heartbeat: one ``UPDATE ... RETURNING`` per tick for every claimed job of the process; a job
  the statement does not return (cancelled, finished, or re-queued by the sweeper to another
  attempt) has its signal cancelled and is beaten no more. That also stops a job whose cancel
  event was lost (Redis down), within one interval.

Two daemon threads per process, whatever the number of jobs: a beat that waits for a database
that is down must not hold up a cancel. Registering a job is a dict insert under a lock.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from ensemble_core.stopping import StopSignal
from jobqueue.events import cancelled_job_ids
from persistence import repository
from persistence.db import Database

log = logging.getLogger(__name__)

RECONNECT_MAX_S = 10.0


@dataclass(eq=False)
class WatchedJob:
    """A job of this process, from before its claim (``claimed`` once it is) to its end."""

    job_id: str
    attempt: int | None = None  # the claim's fencing token; None: not claimed (not beaten)
    signal: StopSignal | None = None
    cancelled: bool = False  # a cancel came (maybe before the signal did)
    beating: bool = True  # False once the row was found no longer running as this attempt


class JobWatch:
    """``register(job_id)`` before the claim, ``claimed(watched, attempt, signal)`` after it,
    ``unregister(watched)`` when the run ends. ``start()`` (idempotent) subscribes first."""

    def __init__(self, db: Database, bus: Any, *, heartbeat_interval_s: float) -> None:
        self.db, self.bus = db, bus
        self.heartbeat_interval_s = heartbeat_interval_s
        self._lock = threading.Lock()
        self._jobs: dict[str, list[WatchedJob]] = {}
        self._stop = threading.Event()
        self._started = False
        self._subscription: Any = None
        self.beats = 0  # heartbeat statements run (for tests and metrics)

    def start(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
        # in the caller, before it registers its job: a cancel committed after its claim is
        # published after the claim, so after this subscription (see workers.job_stop)
        self._subscription = self._subscribe()
        threading.Thread(target=self._listen, name="job-watch-cancels", daemon=True).start()
        threading.Thread(target=self._beat_loop, name="job-watch-heartbeat", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def register(self, job_id: str) -> WatchedJob:
        watched = WatchedJob(job_id)
        with self._lock:
            self._jobs.setdefault(job_id, []).append(watched)
        return watched

    def claimed(self, watched: WatchedJob, attempt: int, signal: StopSignal) -> None:
        with self._lock:
            watched.attempt, watched.signal = attempt, signal
            cancelled = watched.cancelled
        if cancelled:  # heard between the claim and now
            signal.cancel()

    def unregister(self, watched: WatchedJob) -> None:
        with self._lock:
            same_id = self._jobs.get(watched.job_id, [])
            if watched in same_id:
                same_id.remove(watched)
            if not same_id:
                self._jobs.pop(watched.job_id, None)

    def cancel(self, job_ids: list[str]) -> None:
        """Stop these jobs' runs in this process (the cancels channel calls it)."""
        signals = []
        with self._lock:
            for job_id in job_ids:
                for watched in self._jobs.get(job_id, ()):
                    watched.cancelled = True
                    if watched.signal is not None:
                        signals.append(watched.signal)
        for signal in signals:
            log.info("a job of this worker was cancelled while running; stopping it")
            signal.cancel()

    def beat_once(self) -> None:
        """One heartbeat statement for every claimed job; raises when the database is down."""
        with self._lock:
            beaten = [
                w for same_id in self._jobs.values() for w in same_id if w.attempt is not None and w.beating
            ]
        if not beaten:
            return
        with self.db.transaction() as session:
            current = repository.heartbeat_jobs(session, [(w.job_id, w.attempt) for w in beaten])  # type: ignore[misc]
        self.beats += 1
        for watched in beaten:
            if (watched.job_id, watched.attempt) not in current:
                # cancelled, or re-queued to another attempt, meanwhile: this attempt must not
                # look alive, and its engine stops (whatever it writes now is fenced off)
                watched.beating = False
                if watched.signal is not None:
                    watched.signal.cancel()

    def _beat_loop(self) -> None:
        # after a failed beat (database restarting) the next comes sooner, before the sweeper looks
        interval = self.heartbeat_interval_s
        while not self._stop.wait(interval):
            try:
                self.beat_once()
                interval = self.heartbeat_interval_s
            except Exception as exc:  # noqa: BLE001 - a database blip must not end the heartbeat
                log.warning("job heartbeat failed: %s", exc)
                interval = min(1.0, self.heartbeat_interval_s)

    def _subscribe(self) -> Any:
        try:
            return self.bus.subscribe_cancels()
        except Exception as exc:  # noqa: BLE001 - the heartbeat still notices a cancel
            log.warning("cannot listen for cancels (%s); the job heartbeat will notice them", exc)
            return None

    def _listen(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            if self._subscription is None:
                if self._stop.wait(delay):
                    return
                delay = min(delay * 2, RECONNECT_MAX_S)
                self._subscription = self._subscribe()
                continue
            try:
                message = self._subscription.get(1.0)
            except Exception as exc:  # noqa: BLE001 - Redis restarting: subscribe again
                log.warning("cancel subscription lost (%s); subscribing again", exc)
                self._subscription.close()
                self._subscription = None
                continue
            delay = 0.5
            if message is not None:
                self.cancel(cancelled_job_ids(message))
        if self._subscription is not None:
            self._subscription.close()
