"""Cluster-wide job metrics, counted in Postgres in the same transaction as the job's final state.

Why Postgres and not each process's memory: jobs end in many processes (every worker, the
sweeper, the API when it cancels), on several machines, and Prometheus scrapes only the API.
A per-process registry (even prometheus_client's multiprocess mode, which shares a folder on
one host) would lose or split these counts. Instead, the one call that moves a job to a final
state (a conditional UPDATE, so it happens exactly once per job) also adds that job's numbers
to a small table of counters, ``metric_counters`` (name, canonical JSON labels, value). A
scrape reads that table (hundreds of rows, whatever the number of jobs) and never scans the
jobs. If the transaction rolls back, the counts roll back with it; a job delivered twice is
counted once.

Histograms are stored as one counter per bucket (not cumulative: one row per observation)
plus a ``_sum`` row; the API makes the buckets cumulative when it renders them.

Lock order: the counter rows are hot (every job adds to ``jobs_finished_total``), so the
increments are kept in ``session.info`` and applied once, just before the commit, in one
sorted multi-row ``INSERT ... ON CONFLICT DO UPDATE``. A transaction thus takes counter locks
last, in one order, and holds them only until its commit: no deadlock with the job and batch
row locks taken earlier. On Postgres the increments run in a savepoint, so a failure there
(e.g. a database not yet migrated) is logged and never fails the job's own transition.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Float, Select, String, bindparam, column, event, exists, func, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from persistence.models import Job, MetricCounter

log = logging.getLogger(__name__)

OPEN_JOB_STATES = ("queued", "running")
LATENCY_BUCKETS_S = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
ROUND_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0)
TOKEN_KINDS = ("prompt", "generated", "prefilled", "discarded")
_PENDING = "ensemblehub_metric_deltas"
_MAX_LABEL = 120


@dataclass(frozen=True)
class MetricDef:
    """One stored metric. ``name`` is the Prometheus name without the ``ensemblehub_`` prefix."""

    name: str
    kind: str  # "counter" or "histogram"
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()


METRICS: dict[str, MetricDef] = {
    m.name: m
    for m in (
        MetricDef("jobs_finished", "counter", "Jobs that reached a final state", ("state",)),
        MetricDef(
            "job_latency_seconds",
            "histogram",
            "Seconds from submission to the final state, of jobs a worker ran",
            ("state",),
            LATENCY_BUCKETS_S,
        ),
        MetricDef(
            "job_run_seconds",
            "histogram",
            "Seconds from a worker's claim to the final state (model time and storing)",
            ("state",),
            LATENCY_BUCKETS_S,
        ),
        MetricDef(
            "model_tokens",
            "counter",
            "Tokens per member model of succeeded jobs: prompt, generated (winners and losers), "
            "prefilled (prompt once, then what the KV cache lacked), discarded (losing candidates)",
            ("model", "kind"),
        ),
        MetricDef("model_forward_passes", "counter", "Forward passes per member model", ("model",)),
        MetricDef(
            "job_rounds",
            "histogram",
            "Rounds per succeeded job (all its answers), by ensemble method",
            ("method",),
            ROUND_BUCKETS,
        ),
        MetricDef(
            "segment_wins",
            "counter",
            "Accepted rounds each model's segment won, by ensemble method",
            ("method", "model"),
        ),
    )
}


def labels_key(labels: Mapping[str, str]) -> str:
    return json.dumps(
        {k: str(v)[:_MAX_LABEL] for k, v in labels.items()}, sort_keys=True, separators=(",", ":")
    )


class Deltas:
    """Increments to add, keyed by (stored name, labels key)."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, str], float] = {}

    def count(self, name: str, labels: Mapping[str, str], by: float = 1.0) -> None:
        if by:
            key = (name, labels_key(labels))
            self.values[key] = self.values.get(key, 0.0) + float(by)

    def observe(self, name: str, labels: Mapping[str, str], value: float) -> None:
        buckets = METRICS[name].buckets
        bound = next((b for b in buckets if value <= b), None)
        self.count(f"{name}_bucket", {**labels, "le": "+Inf" if bound is None else repr(bound)})
        self.count(f"{name}_sum", labels, value)


# ---------------------------------------------------------------- recording


def record_final_job(session: Session, job_id: str, status: str) -> None:
    """Count one job that just reached ``status`` (call it only from the transition that did it)."""
    row = session.execute(
        select(Job.created_at, Job.started_at, Job.finished_at, Job.result).where(Job.id == job_id)
    ).first()
    if row is None:
        deltas = Deltas()
        deltas.count("jobs_finished", {"state": status})
    else:
        deltas = final_job_deltas(status, *row)
    add_deltas(session, deltas)


def final_job_deltas(
    status: str,
    created_at: datetime,
    started_at: datetime | None,
    finished_at: datetime | None,
    result: Mapping[str, Any] | None,
) -> Deltas:
    """What one job that reached ``status`` adds to the counters."""
    deltas = Deltas()
    deltas.count("jobs_finished", {"state": status})
    if started_at is not None and finished_at is not None:
        deltas.observe("job_latency_seconds", {"state": status}, _seconds(created_at, finished_at))
        deltas.observe("job_run_seconds", {"state": status}, _seconds(started_at, finished_at))
    if status == "succeeded" and result:
        add_result(deltas, result)
    return deltas


def counted_in_one_statement(bind: Session | Connection) -> bool:
    """Whether :func:`returning_with_counters` can be used (it needs Postgres's data-modifying
    CTEs; SQLite adds the counters at commit, one writer at a time anyway)."""
    dialect = bind.dialect if isinstance(bind, Connection) else bind.get_bind().dialect
    return dialect.name == "postgresql"


def returning_with_counters(transition: Any) -> Select[Any]:
    """One statement for a conditional state change and its counters (Postgres).

    ``transition`` is an ``UPDATE ... RETURNING`` that matches one row or none; the counters
    move only when it matched (``WHERE EXISTS``), so exactly once per final state, as with the
    deferred path. The statement returns what ``transition`` returns; the deltas are bound at
    execution (:func:`delta_params`). Lock order: the job row, then the counter rows in sorted
    order, as the deferred path takes them; only for a change that locks nothing after it (the
    deferred path is for batch items, whose batch row is locked after the job's)."""
    settled = transition.cte("settled")
    # the deltas travel as one JSON parameter (a list of rows), not as a VALUES list of literal
    # rows: the statement's shape is then the same for every job, so it is built and compiled
    # once per process (persistence.job_statements) instead of once per job. JSON rather than
    # three arrays: psycopg dumps a text array element by element (~0.1 ms a job), json.dumps
    # the whole list in C
    rows = (
        func.jsonb_to_recordset(bindparam("deltas", type_=JSONB))
        .table_valued(column("name", String), column("labels", String), column("value", Float))
        .render_derived(name="deltas", with_types=True)
    )
    source = (
        select(rows.c.name, rows.c.labels, rows.c.value)
        .where(exists(select(settled.c[0])))
        .order_by(rows.c.name, rows.c.labels)
    )
    upsert = pg_insert(MetricCounter).from_select(["name", "labels", "value"], source)
    upsert = upsert.on_conflict_do_update(
        index_elements=[MetricCounter.name, MetricCounter.labels],
        set_={"value": MetricCounter.value + upsert.excluded.value},
    )
    return select(*settled.c).add_cte(upsert.cte("counted"))


def delta_params(deltas: Deltas) -> dict[str, Any]:
    """The parameters of :func:`returning_with_counters` (no deltas: no rows, nothing counted)."""
    rows = [
        {"name": name, "labels": labels, "value": value} for (name, labels), value in deltas.values.items()
    ]
    return {"deltas": rows}


def record_final_jobs(session: Session, status: str, count: int) -> None:
    """Count jobs ended in bulk without running (a batch cancelled or failed while queued)."""
    if count > 0:
        deltas = Deltas()
        deltas.count("jobs_finished", {"state": status}, count)
        add_deltas(session, deltas)


def add_result(deltas: Deltas, result: Mapping[str, Any]) -> None:
    """Tokens per model, rounds and segment wins of one succeeded job's stored result."""
    usage = result.get("usage") or {}
    for model, counts in (usage.get("per_model") or {}).items():
        for kind in TOKEN_KINDS:
            deltas.count("model_tokens", {"model": model, "kind": kind}, _number(counts.get(kind)))
        deltas.count("model_forward_passes", {"model": model}, _number(counts.get("forward_passes")))
    trace = result.get("trace") or {}
    method = str(trace.get("method") or result.get("method") or "unknown")
    rounds = 0
    for answer in result.get("choices") or [result]:
        for entry in (answer.get("trace") or {}).get("rounds") or []:
            rounds += 1
            if entry.get("winner") and entry.get("accepted", True):
                deltas.count("segment_wins", {"method": method, "model": str(entry["winner"])})
    deltas.observe("job_rounds", {"method": method}, rounds)


def _seconds(start: datetime, end: datetime) -> float:
    # SQLite (embedded mode) returns naive datetimes; every stored time is UTC
    start, end = (t if t.tzinfo is not None else t.replace(tzinfo=UTC) for t in (start, end))
    return max(0.0, (end - start).total_seconds())


def _number(value: Any) -> float:
    try:
        return float(value or 0)
    except (TypeError, ValueError):
        return 0.0


def add_deltas(session: Session, deltas: Deltas) -> None:
    """Add ``deltas`` to the counters just before this session commits (see the module)."""
    pending: dict[tuple[str, str], float] | None = session.info.get(_PENDING)
    if pending is None:
        pending = session.info[_PENDING] = {}
        if not session.info.get(_PENDING + ":hooked"):
            session.info[_PENDING + ":hooked"] = True
            event.listen(session, "before_commit", _apply_pending)
            event.listen(session, "after_rollback", _drop_pending)
    for key, value in deltas.values.items():
        pending[key] = pending.get(key, 0.0) + value


def _drop_pending(session: Session) -> None:
    session.info.pop(_PENDING, None)


def _apply_pending(session: Session) -> None:
    pending = session.info.pop(_PENDING, None)
    if not pending:
        return
    if session.get_bind().dialect.name != "postgresql":
        increment(session, pending)  # SQLite (embedded mode): one writer at a time anyway
        return
    try:
        with session.begin_nested():
            increment(session, pending)
    except SQLAlchemyError as exc:
        log.warning("metric counters not updated (the job's own transition is kept): %s", exc)


def increment(session: Session, deltas: Mapping[tuple[str, str], float]) -> None:
    """Add to counters in one statement, rows in sorted order (the lock order of every caller)."""
    rows = [{"name": n, "labels": lb, "value": v} for (n, lb), v in sorted(deltas.items())]
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    stmt = insert(MetricCounter).values(rows)
    stmt = stmt.on_conflict_do_update(
        index_elements=[MetricCounter.name, MetricCounter.labels],
        set_={"value": MetricCounter.value + stmt.excluded.value},
    )
    session.execute(stmt)


# ---------------------------------------------------------------- reading


def read_counters(session: Session) -> list[tuple[str, dict[str, str], float]]:
    rows = session.execute(select(MetricCounter.name, MetricCounter.labels, MetricCounter.value)).all()
    return [(name, json.loads(labels), float(value)) for name, labels, value in rows]


def count_open_jobs(session: Session) -> dict[str, int]:
    """Queued and running jobs, counted live through the (status, created_at) index: these sets
    are bounded by the queue limit, unlike the finished jobs, which come from the counters."""
    rows = session.execute(
        select(Job.status, func.count()).where(Job.status.in_(OPEN_JOB_STATES)).group_by(Job.status)
    ).all()
    counts = dict.fromkeys(OPEN_JOB_STATES, 0)
    counts.update({str(status): int(n) for status, n in rows})
    return counts
