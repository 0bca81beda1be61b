"""A running job's stop signal: its deadline, and a listener that hears it cancelled.

The engine checks the signal once per decode step, which must cost nothing: a flag and a
clock read. Setting the flag is this module's job. A thread per running job listens on the
job's event channel (the API publishes ``cancel_event()`` after it marks the job cancelled)
and sets the flag the moment the event arrives; pub/sub keeps nothing, so the listener
subscribes before the job is claimed (a cancel that came before makes the claim fail), and the
job heartbeat, which finds the row no longer running, sets it too (a cancel whose event was
lost).

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
from workers.runtime import WorkerRuntime

log = logging.getLogger(__name__)


def job_deadline_s(runtime: WorkerRuntime, request_json: dict[str, Any]) -> float | None:
    value = request_json.get("deadline_s")
    if value is None:
        value = runtime.settings.job_deadline_s
    return float(value) if value else None


class CancelListener:
    """Sets a job's stop signal when the job is cancelled.

    Open it before the job is claimed: pub/sub keeps nothing, but a subscription made before
    the claim hears every cancel that commits after the claim, since the API publishes after
    its commit. A cancel committed earlier makes the claim fail, and one racing the claim
    waits for the claim's row lock, then commits and publishes. So no read of the row is
    needed. ``listen(signal)`` once the job is claimed; ``close()`` when the run ends."""

    def __init__(self, runtime: WorkerRuntime, job_id: str) -> None:
        self.runtime, self.job_id = runtime, job_id
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self._subscription: Any = None
        try:
            self._subscription = runtime.bus.subscribe(job_id)
        except Exception as exc:  # noqa: BLE001 - the heartbeat still notices a cancel
            log.warning("job %s: cannot listen for a cancel (%s); the heartbeat will notice", job_id, exc)

    def listen(self, signal: StopSignal) -> None:
        if self._subscription is None or self._closed.is_set():
            return
        self._thread = threading.Thread(
            target=self._listen, args=(signal,), name=f"cancel-{self.job_id}", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._closed.set()
        if self._thread is None and self._subscription is not None:
            self._subscription.close()  # never listened: the job was not claimed, or ended at once

    def _listen(self, signal: StopSignal) -> None:
        subscription = self._subscription
        try:
            while not self._closed.is_set():
                event = subscription.get(0.5)
                if event is not None and is_cancel_event(event):
                    log.info("job %s: cancelled while running; stopping", self.job_id)
                    signal.cancel()
                    return
        except Exception as exc:  # noqa: BLE001
            log.warning("job %s: cancel listener stopped (%s); the heartbeat will notice", self.job_id, exc)
        finally:
            subscription.close()
