"""Run one job: claim it, run the ensemble, store the result, tell the waiters.

Everything here is idempotent under at-least-once delivery: the claim is a conditional update
(only a queued job can start) and the result write only succeeds on a running job. The final
state, the batch counters and the webhook event rows commit together; the webhook tasks are
sent after that commit.

A job stops early when it is cancelled or runs past its deadline (``workers.job_stop``): the
engine checks the signal between decode steps and the partial answer is kept, in the cancelled
row or in the ``deadline_exceeded`` failure.

Postgres restarting is waited out: the claim and the final write are retried for
``database_retry_s`` (a finished answer is not thrown away for a blip). A claim that still
fails raises :class:`DatabaseUnavailable`, and the task is retried later.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from ensemble_core.engine import run_ensemble
from ensemble_core.errors import EnsembleError
from ensemble_core.prefix_scope import prefix_scope
from ensemble_core.references import resolve_references, restore_names
from ensemble_core.result import EnsembleResult
from ensemble_core.spec import EnsembleConfig, EnsembleSpec, GenerationRequest
from ensemble_core.stopping import CANCELLED, DEADLINE_EXCEEDED, StopSignal
from jobqueue.routing import job_members, queue_for
from jobqueue.webhook_events import record_settlement_events
from persistence import repository
from persistence.repository import Settled
from workers.job_stop import job_deadline_s
from workers.runtime import WorkerRuntime
from workers.stream_events import SegmentCoalescer

log = logging.getLogger(__name__)

SendWebhooks = Callable[[list[int]], None]
T = TypeVar("T")

# errors of a database that is down or restarting (not of a bad statement)
DATABASE_DOWN = (OperationalError, InterfaceError, PoolTimeoutError)


class DatabaseUnavailable(Exception):
    """Postgres did not answer for ``database_retry_s``; the task should be retried later."""


def with_database_retry(runtime: WorkerRuntime, what: str, action: Callable[[], T]) -> T:
    """Run a transaction, retrying it while the database is down (it must be idempotent)."""
    deadline = time.monotonic() + runtime.settings.database_retry_s
    delay = 0.5
    while True:
        try:
            return action()
        except DATABASE_DOWN as exc:
            if time.monotonic() + delay > deadline:
                raise DatabaseUnavailable(f"{what}: the database did not answer: {exc}") from exc
            log.warning("%s: database unavailable, retrying in %.1f s: %s", what, delay, exc)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def run_job(
    runtime: WorkerRuntime,
    job_id: str,
    *,
    send_webhooks: SendWebhooks | None = None,
    reroute: Callable[[str], None] | None = None,
) -> str:
    """Returns the final status, "skipped" when another delivery already owns the job, or
    "rerouted" when this worker does not hold the job's members (``reroute(queue)`` sends the
    still queued job to the queue of its member set)."""
    watch = runtime.job_watch()
    watched = watch.register(job_id)  # before the claim: see workers.job_stop
    try:
        claimed = with_database_retry(runtime, f"claim {job_id}", lambda: _claim(runtime, job_id))
    except _NotHeld as exc:
        watch.unregister(watched)
        return _pass_on(runtime, job_id, exc.members, reroute, send_webhooks)
    except BaseException:
        watch.unregister(watched)
        raise
    if claimed is None:
        watch.unregister(watched)
        return "skipped"
    claim, spec_json = claimed
    request_json, attempt = claim.request, claim.attempts
    # no "started" event: nothing waits for it (waiters need the final state, streams the
    # segments), and it was a Redis round trip before the job's first token
    publish = _Publisher(runtime, job_id, attempt, request_json.get("reply_to"))

    stop = StopSignal(deadline_s=job_deadline_s(runtime, request_json))
    watch.claimed(watched, attempt, stop)  # heard cancels and the heartbeat now reach `stop`
    started = time.perf_counter()
    try:
        if spec_json is None:
            raise EnsembleError(
                "no ensemble configuration version is attached to this job", code="invalid_config"
            )
        spec = _member_subset(EnsembleSpec.model_validate(spec_json), request_json.get("models"))
        config = EnsembleConfig.model_validate(
            request_json.get("ensemble_config") or spec.default_ensemble_config.model_dump()
        )
        gen_request = GenerationRequest.model_validate(request_json["generation"])
        # the job stores names of the version's scorers and fusers; the engine gets what they
        # stand for, and the stored trace shows the names again
        resolved = resolve_references(config, spec)
        # a tenant's sessions share prompt key/values only with its own jobs (shared_prefixes)
        with prefix_scope(claim.tenant):
            results = _run_choices(
                publish,
                spec,
                resolved,
                gen_request,
                int(request_json.get("n") or 1),
                stop,
                segment_events=request_json.get("segment_events") is not False,
            )
        payload = _without_nul(_result_payload(results))
        for choice in [payload, *payload.get("choices", [])]:
            if isinstance(choice.get("trace"), dict):
                restore_names(choice["trace"], config)
        payload["timings"] = {"model_ms": round((time.perf_counter() - started) * 1000, 1)}
        status, deliveries = _store(runtime, job_id, attempt, payload, stop, claim=claim)
        final = _final_fields(status, payload)
    except EnsembleError as exc:
        status, deliveries = _fail(runtime, job_id, attempt, exc.code, str(exc), claim=claim)
        final = _final_fields(status, None, exc.code, str(exc))
    except DatabaseUnavailable:
        # the job stays running without a heartbeat: the sweeper gives it another attempt
        raise
    except Exception as exc:  # noqa: BLE001 - every job must end in a final state with a stable code
        log.exception("job %s failed", job_id)
        message = f"{type(exc).__name__}: {exc}"
        status, deliveries = _fail(runtime, job_id, attempt, "internal_error", message, claim=claim)
        final = _final_fields(status, None, "internal_error", message)
    finally:
        watch.unregister(watched)
    if status == "skipped":
        # fenced off: the sweeper gave the job to another attempt, whose writes and events count
        log.warning("job %s: attempt %d is no longer current; its result was dropped", job_id, attempt)
        return status
    publish(done_event(status, final))
    if deliveries and send_webhooks is not None:
        try:
            send_webhooks(deliveries)
        except Exception as exc:  # noqa: BLE001 - the rows stay pending; a re-send finds them
            log.warning("could not enqueue webhook deliveries %s: %s", deliveries, exc)
    return status


class _NotHeld(Exception):
    """The job names members this worker was not started with (``--members``)."""

    def __init__(self, members: list[str]) -> None:
        super().__init__(members)
        self.members = members


def _claim(runtime: WorkerRuntime, job_id: str) -> tuple[repository.ClaimedJob, dict[str, Any] | None] | None:
    """The claimed job (its ``attempts`` is the fencing token) and its config version's spec:
    one statement when the version is cached (its rows are immutable).

    A worker started with ``--members`` checks, in the claim's transaction, that it holds every
    member the job may run; if not, :class:`_NotHeld` rolls the claim back (the job stays
    queued and no model is loaded). Other workers pay nothing for the check: their claim is
    one statement, atomic by itself, run as its own transaction (no BEGIN/COMMIT round trips);
    a config version the cache lacks is read after it (its rows never change)."""
    held = runtime.settings.held_members()
    if held is None and runtime.db.dialect_name == "postgresql":
        with runtime.db.statement() as connection:
            claim = repository.claim_job(connection, job_id, worker=runtime.hostname)
        if claim is None:
            return None
        version_id = claim.config_version_id
        if not version_id:
            return claim, None

        def read_spec() -> dict[str, Any] | None:
            # a session connects on first use only: nothing when the version is cached
            with runtime.db.sessions() as session:
                return runtime.config_versions.get(session, version_id)

        # the claim is committed: a database blip now retries the read alone (a claim retried
        # would find the job taken by itself and skip it)
        return claim, with_database_retry(runtime, f"read config version {version_id}", read_spec)
    with runtime.db.transaction() as session:
        claim = repository.claim_job(session, job_id, worker=runtime.hostname)
        if claim is None:
            return None
        version_id = claim.config_version_id
        spec = runtime.config_versions.get(session, version_id) if version_id else None
        if held is not None and spec is not None:
            missing = _members_not_held(runtime, session, spec, claim.request.get("models"), held)
            if missing is not None:
                raise _NotHeld(missing)
        return claim, spec


def _members_not_held(
    runtime: WorkerRuntime, session: Any, spec_json: dict[str, Any], models: Any, held: list[str]
) -> list[str] | None:
    """The job's member names if this worker does not hold all of them, else None. With
    ``--config-version N`` a member must also be the same weights (load key) as in version N,
    not only the same name."""
    spec = EnsembleSpec.model_validate(spec_json)
    names = job_members(spec, models if isinstance(models, list) else None)
    if not set(names) <= set(held):
        return names
    version_id = runtime.settings.worker_config_version
    if version_id is not None:
        own = runtime.config_versions.get(session, version_id)
        keys = (
            {m.display_name: m.load_key() for m in EnsembleSpec.model_validate(own).model_specs}
            if own
            else {}
        )
        if any(keys.get(m.display_name) != m.load_key() for m in spec.model_specs if m.display_name in names):
            return names
    return None


def _pass_on(
    runtime: WorkerRuntime,
    job_id: str,
    members: list[str],
    reroute: Callable[[str], None] | None,
    send_webhooks: SendWebhooks | None,
) -> str:
    """A job this worker must not run: send it on to the queue of its member set, where a worker
    that holds them takes it; if that is a queue this worker reads itself (same names, other
    weights under ``--config-version``), nobody can run it here: it fails, clearly."""
    queue = queue_for(members, route_by_members=True)
    if reroute is not None and queue not in (runtime.queues or ()):
        log.warning("job %s names members %s this worker does not hold; sent to %s", job_id, members, queue)
        reroute(queue)
        return "rerouted"
    message = (
        f"this job's members {members} are not the ones this worker holds "
        f"({runtime.settings.held_members()}); no worker of queue {queue} can run it"
    )
    log.warning("job %s: %s", job_id, message)
    status, deliveries = _settle(
        runtime,
        lambda s: repository.fail_job(
            s, job_id, code="no_worker_for_members", message=message, from_statuses=("queued",)
        ),
    )
    if status != "skipped":
        publish = _Publisher(runtime, job_id, 0)
        publish(done_event(status, _final_fields(status, None, "no_worker_for_members", message)))
    if deliveries and send_webhooks is not None:
        send_webhooks(deliveries)
    return status


# a done event carries the final state (``final``) so that the API answers without reading the
# row; past this size it carries none and the API reads the row (Postgres is the truth anyway)
MAX_EVENT_RESULT_BYTES = 256 * 1024


def _final_fields(
    status: str, result: dict[str, Any] | None, code: str | None = None, message: str | None = None
) -> dict[str, Any] | None:
    """What this attempt wrote as the job's final state (None: nothing final of its own)."""
    if status == "succeeded" and result is not None:
        return {"result": result, "usage": result.get("usage")}
    if status == "failed":
        if code is None:  # the deadline: the failure keeps the partial answer (see _store)
            return None
        return {"error_code": code, "error_message": _without_nul(message or "")[:4000]}
    return None


def done_event(status: str, final: dict[str, Any] | None) -> dict[str, Any]:
    """The job's done event. ``final``: the row's final fields as this attempt committed them
    (``result``, ``usage``, ``error_code``, ``error_message``), left out when large."""
    event: dict[str, Any] = {"type": "done", "status": status}
    if final is not None and len(json.dumps(final)) <= MAX_EVENT_RESULT_BYTES:
        event["final"] = final
    return event


class _Publisher:
    """Publishes a job's events stamped with the attempt, so a listener drops the events of an
    attempt older than the newest it has seen. Events are a fast path only (waiters re-read
    Postgres): a broker blip must not fail a job."""

    def __init__(self, runtime: WorkerRuntime, job_id: str, attempt: int, reply_to: Any = None) -> None:
        self.runtime, self.job_id, self.attempt = runtime, job_id, attempt
        # the API process waiting for the answer (jobqueue.reply_inbox): its done event goes
        # there too (the bus publishes to nothing but a reply channel)
        self.reply_to = reply_to if isinstance(reply_to, str) else None

    def __call__(self, event: dict[str, Any]) -> None:
        reply_to = self.reply_to if event.get("type") == "done" else None
        try:
            self.runtime.bus.publish(self.job_id, {**event, "attempt": self.attempt}, reply_to=reply_to)
        except Exception as exc:  # noqa: BLE001
            log.warning("could not publish %s of job %s: %s", event.get("type"), self.job_id, exc)


def _run_choices(
    publish: _Publisher,
    spec: EnsembleSpec,
    config: EnsembleConfig,
    request: GenerationRequest,
    n: int,
    stop: StopSignal | None = None,
    *,
    segment_events: bool = True,
) -> list[EnsembleResult]:
    """OpenAI's ``n``: n independent answers. With a seed, choice i uses seed + i, so the
    choices differ and the job still replays exactly. ``segment_events``: publish the text as
    it is decoded (a stream relays it); a job nobody streams (``"segment_events": false`` in
    its request) publishes only its done event, and its engine does no per-token callbacks."""
    results = []
    for index in range(n):
        choice_request = request
        if index and request.seed is not None:
            choice_request = request.model_copy(update={"seed": request.seed + index})

        on_segment = (
            SegmentCoalescer(publish, index, publish.runtime.settings.stream_coalesce_s)
            if segment_events
            else None
        )
        try:
            results.append(
                run_ensemble(
                    spec, config, choice_request, publish.runtime.pool, on_segment=on_segment, stop=stop
                )
            )
        finally:
            if on_segment is not None:
                on_segment.close()
        if stop is not None and stop.reason is not None:
            break  # the choices not begun are not run: the job is cancelled or out of time
    return results


def _result_payload(results: list[EnsembleResult]) -> dict[str, Any]:
    """The first answer is the job's result (``text``, ``trace``, ...); with n > 1 every answer
    is also listed under ``choices`` and the usage adds up all of them (the prompt once)."""
    payload: dict[str, Any] = results[0].model_dump(mode="json")
    if len(results) > 1:
        payload["choices"] = [r.model_dump(mode="json", exclude={"usage"}) for r in results]
        usage = payload["usage"]
        usage["completion_tokens"] = sum(r.usage.completion_tokens for r in results)
        per_model: dict[str, dict[str, int]] = {}
        for r in results:
            for name, counts in r.usage.model_dump(mode="json")["per_model"].items():
                merged = per_model.setdefault(name, {})
                for key, value in counts.items():
                    merged[key] = merged.get(key, 0) + int(value)
        usage["per_model"] = per_model
    return payload


def _without_nul(value: Any) -> Any:
    """Postgres text and JSONB cannot hold U+0000, which a model may well generate: store
    U+FFFD (the replacement character) instead of failing the job."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        # keys too: the top_logprobs of a position map token texts (a NUL among them) to values
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    return value


def _member_subset(spec: EnsembleSpec, names: list[str] | None) -> EnsembleSpec:
    """A request that names a member model (``"model": "tiny-llama"``) runs that member alone."""
    if not names:
        return spec
    members = [m for m in spec.model_specs if m.display_name in names]
    if not members:
        raise EnsembleError(f"none of the models {names} is in this config version", code="model_not_found")
    return spec.model_copy(update={"model_specs": members})


def _settle(
    runtime: WorkerRuntime,
    transition: Callable[[Any], Settled | None],
    *,
    claim: repository.ClaimedJob | None = None,
) -> tuple[str, list[int]]:
    """Apply the final-state transition; record its webhook events in the same transaction.
    Retried while the database is down (the transition is conditional, so at most once).

    ``claim``: the worker's claim the transition settles (``repository.settle``). When that is
    one statement with no event row to commit with it (``repository.settles_alone``), it runs
    as its own transaction: no BEGIN/COMMIT round trips."""
    alone = claim is not None and repository.settles_alone(runtime.db.dialect_name, claim)

    def attempt() -> tuple[str, list[int]]:
        if alone:
            with runtime.db.statement() as connection:
                settled = transition(connection)
            return (settled.status if settled is not None else "skipped"), []
        with runtime.db.transaction() as session:
            settled = transition(session)
            deliveries = record_settlement_events(session, [settled]) if settled is not None else []
        return (settled.status if settled is not None else "skipped"), deliveries

    return with_database_retry(runtime, "store the final state", attempt)


def _store(
    runtime: WorkerRuntime,
    job_id: str,
    attempt: int,
    payload: dict[str, Any],
    stop: StopSignal,
    *,
    claim: repository.ClaimedJob | None = None,
) -> tuple[str, list[int]]:
    """The final write: the answer; or, past the deadline, a ``deadline_exceeded`` failure that
    keeps the partial one. A job cancelled meanwhile (the API set its final state already)
    keeps what this attempt has, partial or, for a cancel that came as it finished, whole.
    ``claim``: this attempt's claim, so the settlement reads nothing back (``repository.settle``)."""
    usage = payload.get("usage")
    if stop.reason != CANCELLED:
        if stop.reason == DEADLINE_EXCEEDED:
            seconds = payload.get("timings", {}).get("model_ms", 0) / 1000
            message = (
                f"the job ran past its deadline ({seconds:.1f} s); the partial answer is in result "
                f"({(usage or {}).get('completion_tokens', 0)} tokens)"
            )

            def transition(s: Any) -> Settled | None:
                return repository.fail_job(
                    s,
                    job_id,
                    code=DEADLINE_EXCEEDED,
                    message=message,
                    from_statuses=("running",),
                    attempt=attempt,
                    result=payload,
                    usage=usage,
                    claim=claim,
                )
        else:

            def transition(s: Any) -> Settled | None:
                return repository.finish_job(
                    s, job_id, result=payload, usage=usage, attempt=attempt, claim=claim
                )

        status, deliveries = _settle(runtime, transition, claim=claim)
        if status != "skipped":
            return status, deliveries

    def keep_partial() -> bool:
        with runtime.db.transaction() as session:
            return repository.store_partial_result(
                session, job_id, result=payload, usage=usage, attempt=attempt
            )

    stored = with_database_retry(runtime, "store the partial answer", keep_partial)
    return ("cancelled" if stored else "skipped"), []


def _fail(
    runtime: WorkerRuntime,
    job_id: str,
    attempt: int,
    code: str,
    message: str,
    *,
    claim: repository.ClaimedJob | None = None,
) -> tuple[str, list[int]]:
    status, deliveries = _settle(
        runtime,
        lambda s: repository.fail_job(
            s,
            job_id,
            code=code,
            message=_without_nul(message),
            from_statuses=("running",),
            attempt=attempt,
            claim=claim,
        ),
        claim=claim,
    )
    return ("failed" if status != "skipped" else status), deliveries
