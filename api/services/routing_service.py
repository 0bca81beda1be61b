"""Which queue a submitted job goes to (scale-out by member set; ``jobqueue.routing``).

With ``ENSEMBLEHUB_ROUTE_BY_MEMBERS`` off (the default) every job goes to the ``models`` queue
and this module costs nothing. On, a job goes to the queue of its member set, and a job whose
member set no live worker reads is refused before anything is stored (503
``no_worker_for_members``, ``Retry-After``): a job that no worker would ever take is not left
waiting in silence. A job accepted while its worker was alive waits, ``queued``, for a worker
of its queue should that worker die (Redis keeps the message; the sweeper re-sends it there).

Both look-ups are cached per API process: a config version's members forever (versions are
immutable), the queues live workers read for ``LIVE_QUEUES_TTL_S`` (their heartbeat rows).
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Iterable

from api.errors import ServiceUnavailable
from api.state import AppState
from ensemble_core.spec import EnsembleSpec
from jobqueue.contract import MODELS_QUEUE
from jobqueue.routing import job_members, queue_for
from persistence import repository
from persistence.db import Database

LIVE_QUEUES_TTL_S = 2.0
_lock = threading.Lock()
_version_specs: weakref.WeakKeyDictionary[Database, dict[int, EnsembleSpec]] = weakref.WeakKeyDictionary()
_live_queues: weakref.WeakKeyDictionary[Database, tuple[float, frozenset[str]]] = weakref.WeakKeyDictionary()


def route_job(state: AppState, config_version_id: int | None, models: Iterable[str] | None = None) -> str:
    """The queue of a new job (its config version and the member names the request picked).

    Raises ``no_worker_for_members`` (503) when routing is on and no live worker reads it."""
    if not state.queue_settings.route_by_members or config_version_id is None:
        return MODELS_QUEUE
    members = job_members(_version_spec(state.db, config_version_id), models)
    queue = queue_for(members, route_by_members=True)
    if queue not in live_queues(state.db):
        raise ServiceUnavailable(
            f"no worker holds the members {', '.join(members)} of this request; retry once one is "
            "running (an operator starts one with `ensemblehub worker --members "
            f"{','.join(members)}`)",
            code="no_worker_for_members",
            retry_after_s=30,
        )
    return queue


def live_queues(db: Database) -> frozenset[str]:
    """The queues read by workers whose heartbeat is recent (cached a moment)."""
    now = time.monotonic()
    with _lock:
        cached = _live_queues.get(db)
    if cached is not None and cached[0] > now:
        return cached[1]
    with db.transaction() as session:
        queues = frozenset(q for w in repository.live_workers(session) for q in (w.queues or ()))
    with _lock:
        _live_queues[db] = (now + LIVE_QUEUES_TTL_S, queues)
    return queues


def _version_spec(db: Database, version_id: int) -> EnsembleSpec:
    with _lock:
        spec = _version_specs.get(db, {}).get(version_id)
    if spec is None:
        with db.transaction() as session:
            row = repository.get_config_version(session, version_id)
            if row is None:
                raise LookupError(f"config version {version_id} does not exist")
            spec = EnsembleSpec.model_validate(row.spec)
        with _lock:
            _version_specs.setdefault(db, {})[version_id] = spec
    return spec
