"""Run one job: claim it, run the ensemble, store the result, tell the waiters.

Everything here is idempotent under at-least-once delivery: the claim is a conditional update
(only a queued job can start) and the result write only succeeds on a running job.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from ensemble_core.engine import run_ensemble

from ensemble_core.errors import EnsembleError
from ensemble_core.result import SegmentEvent
from ensemble_core.spec import EnsembleConfig, EnsembleSpec, GenerationRequest
from persistence import repository
from workers.runtime import WorkerRuntime

log = logging.getLogger(__name__)


def run_job(runtime: WorkerRuntime, job_id: str) -> str:
    """Returns the final status, or "skipped" when another delivery already owns the job."""
    with runtime.db.transaction() as session:
        job = repository.claim_job(session, job_id, worker=runtime.hostname)
        if job is None:
            return "skipped"
        request_json: dict[str, Any] = dict(job.request)
        version = (
            repository.get_config_version(session, job.config_version_id) if job.config_version_id else None
        )
        spec_json = dict(version.spec) if version else None
    runtime.bus.publish(job_id, {"type": "started"})

    stop_beat = threading.Event()
    beat = threading.Thread(target=_job_heartbeat, args=(runtime, job_id, stop_beat), daemon=True)
    beat.start()
    started = time.perf_counter()
    try:
        if spec_json is None:
            raise EnsembleError(
                "no ensemble configuration version is attached to this job", code="invalid_config"
            )
        spec = EnsembleSpec.model_validate(spec_json)
        config = EnsembleConfig.model_validate(
            request_json.get("ensemble_config") or spec.default_ensemble_config.model_dump()
        )
        gen_request = GenerationRequest.model_validate(request_json["generation"])

        def on_segment(event: SegmentEvent) -> None:
            runtime.bus.publish(job_id, {"type": "segment", **event.model_dump(mode="json")})

        result = run_ensemble(spec, config, gen_request, runtime.pool, on_segment=on_segment)
        payload = result.model_dump(mode="json")
        payload["timings"] = {"model_ms": round((time.perf_counter() - started) * 1000, 1)}
        usage = payload.get("usage")
        with runtime.db.transaction() as session:
            stored = repository.finish_job(session, job_id, result=payload, usage=usage)
        status = "succeeded" if stored else "skipped"
    except EnsembleError as exc:
        status = _fail(runtime, job_id, exc.code, str(exc))
    except Exception as exc:  # noqa: BLE001 - every job must end in a final state with a stable code
        log.exception("job %s failed", job_id)
        status = _fail(runtime, job_id, "internal_error", f"{type(exc).__name__}: {exc}")
    finally:
        stop_beat.set()
    runtime.bus.publish(job_id, {"type": "done", "status": status})
    return status


def _fail(runtime: WorkerRuntime, job_id: str, code: str, message: str) -> str:
    with runtime.db.transaction() as session:
        repository.fail_job(session, job_id, code=code, message=message, from_statuses=("running",))
    return "failed"


def _job_heartbeat(runtime: WorkerRuntime, job_id: str, stop: threading.Event) -> None:
    # the sweeper treats a running job without a recent heartbeat as orphaned by a dead worker
    while not stop.wait(runtime.settings.heartbeat_interval_s):
        try:
            with runtime.db.transaction() as session:
                repository.heartbeat_job(session, job_id)
        except Exception as exc:  # noqa: BLE001
            log.warning("job heartbeat failed: %s", exc)
