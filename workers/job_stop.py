"""A running job's stop signal: its deadline here, its cancel from the process's job watch.

The engine checks the signal once per decode step, which must cost nothing: a flag and a
clock read. Who sets the flag on a cancel is ``workers.job_watch``: one subscription per
worker process to the cancels channel (the API publishes the job id there after it commits
the cancel) and one heartbeat statement per tick for all the process's jobs, which finds a
cancelled row no longer running (a cancel whose event was lost).

Why no cancel is missed without reading the row: pub/sub keeps nothing, so the job registers
with the watch before its claim, and the watch's subscription was confirmed by Redis before
any job registered. A cancel committed before the claim makes the claim fail; one racing the
claim waits for the claim's row lock, then commits; either way a cancel committed after the
claim is published after it, so after the subscription, and the watch hears it. One heard
between the claim and the moment the job hands the watch its signal is kept and applied
then. While the watch's connection is down, the heartbeat notices within one interval.

The deadline is the job's ``deadline_s`` (resolved and capped by the API when the job was
submitted), counted from this attempt's start; jobs stored without one get
``ENSEMBLEHUB_JOB_DEADLINE_S``.
"""

from __future__ import annotations

from typing import Any

from workers.runtime import WorkerRuntime


def job_deadline_s(runtime: WorkerRuntime, request_json: dict[str, Any]) -> float | None:
    value = request_json.get("deadline_s")
    if value is None:
        value = runtime.settings.job_deadline_s
    return float(value) if value else None
