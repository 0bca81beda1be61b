"""A running job's stop signal: its deadline, and a listener that hears it cancelled.

The engine checks the signal once per decode step, which must cost nothing: a flag and a
clock read. Setting the flag is this module's job. A thread per running job listens on the
job's event channel (the API publishes ``cancel_event()`` after it marks the job cancelled)
and sets the flag the moment the event arrives; pub/sub keeps nothing, so the listener also
reads the job's row once after subscribing (a cancel that came before) and the job heartbeat,
which finds the row no longer running, sets it too (a cancel whose event was lost).

The deadline is the job's ``deadline_s`` (resolved and capped by the API when the job was
submitted), counted from this attempt's start; jobs stored without one get
``ENSEMBLEHUB_JOB_DEADLINE_S``.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from ensemble_core.stopping import StopSignal
from jobqueue.events import is_cancel_event
from persistence import repository
from workers.runtime import WorkerRuntime

log = logging.getLogger(__name__)


def job_deadline_s(runtime: WorkerRuntime, request_json: dict[str, Any]) -> float | None:
    value = request_json.get("deadline_s")
    if value is None:
        value = runtime.settings.job_deadline_s
    return float(value) if value else None


class CancelListener:
    """Sets ``signal`` when job ``job_id`` is cancelled; ``close()`` when the run ends."""

    def __init__(self, runtime: WorkerRuntime, job_id: str, signal: StopSignal) -> None:
        self.runtime, self.job_id, self.signal = runtime, job_id, signal
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._listen, name=f"cancel-{job_id}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._closed.set()

    def _listen(self) -> None:
        try:
            subscription = self.runtime.bus.subscribe(self.job_id)
        except Exception as exc:  # noqa: BLE001 - the heartbeat still notices a cancel
            log.warning(
                "job %s: cannot listen for a cancel (%s); the heartbeat will notice", self.job_id, exc
            )
            return
        try:
            if self._cancelled_already():
                self.signal.cancel()
                return
            while not self._closed.is_set():
                event = subscription.get(0.5)
                if event is not None and is_cancel_event(event):
                    log.info("job %s: cancelled while running; stopping", self.job_id)
                    self.signal.cancel()
                    return
        except Exception as exc:  # noqa: BLE001
            log.warning("job %s: cancel listener stopped (%s); the heartbeat will notice", self.job_id, exc)
        finally:
            subscription.close()

    def _cancelled_already(self) -> bool:
        try:
            with self.runtime.db.transaction() as session:
                job = repository.get_job(session, self.job_id)
                return job is None or job.status == "cancelled"
        except Exception:  # noqa: BLE001 - the database blipping is the heartbeat's to notice
            return False
