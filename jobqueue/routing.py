"""Scale-out by member set: which Celery queue a job goes to, and which queues a worker reads.

A worker started with ``--members a,b`` (or ``--config-version N``: that version's members)
holds those members only. It reads one queue per non-empty subset of its members
(``models@a``, ``models@b``, ``models@a+b``), so a job goes to the one queue named by its own
member set, and every worker holding a superset of it can take it: the choice needs no lookup
of which workers exist (see :func:`queue_for`).

Routing is a deployment setting (``ENSEMBLEHUB_ROUTE_BY_MEMBERS``, off by default). Off, every
job goes to the ``models`` queue and a worker without ``--members`` loads whatever members a
job names (the behaviour before routing existed). On, the API refuses a job whose member set
no live worker reads (``no_worker_for_members``, 503) instead of leaving it in a queue that no
one reads.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Iterable

from ensemble_core.spec import EnsembleSpec
from jobqueue.contract import MODELS_QUEUE

MEMBER_QUEUE_PREFIX = "models@"
# a worker reads 2**n - 1 queues for n members; past this, declare several workers instead
MAX_MEMBERS_PER_WORKER = 6
# names that can appear in a queue name as they are (Celery's -Q list is comma-separated)
_PLAIN_NAME = re.compile(r"[A-Za-z0-9._-]+")
_MAX_PLAIN_LENGTH = 160


def member_set_queue(members: Iterable[str]) -> str:
    """The stable queue name of a member set: ``models@a+b`` (names sorted), or
    ``models@set-<sha256 prefix>`` when a name has characters a queue list cannot carry."""
    names = sorted(set(members))
    if not names:
        raise ValueError("a member set has at least one member")
    joined = "+".join(names)
    if all(_PLAIN_NAME.fullmatch(n) for n in names) and len(joined) <= _MAX_PLAIN_LENGTH:
        return MEMBER_QUEUE_PREFIX + joined
    digest = hashlib.sha256(json.dumps(names).encode()).hexdigest()[:16]
    return f"{MEMBER_QUEUE_PREFIX}set-{digest}"


def queue_for(members: Iterable[str] | None, *, route_by_members: bool) -> str:
    """The queue of a job that names ``members`` (the member names it may run).

    Without routing, or for a job whose members are unknown, the default ``models`` queue."""
    names = sorted(set(members or ()))
    if not route_by_members or not names:
        return MODELS_QUEUE
    return member_set_queue(names)


def queues_held(members: Iterable[str]) -> list[str]:
    """Every queue a worker holding ``members`` reads: one per non-empty subset."""
    names = sorted(set(members))
    if not names:
        raise ValueError("--members names at least one member")
    if len(names) > MAX_MEMBERS_PER_WORKER:
        raise ValueError(
            f"a worker holds at most {MAX_MEMBERS_PER_WORKER} members ({len(names)} given: it "
            f"would read {2 ** len(names) - 1} queues); run one worker per member set instead"
        )
    subsets = (c for size in range(1, len(names) + 1) for c in itertools.combinations(names, size))
    return [member_set_queue(s) for s in subsets]


def parse_members(text: str) -> list[str]:
    """``--members a,b`` -> ``["a", "b"]`` (blank entries dropped, order kept, no duplicates)."""
    seen: list[str] = []
    for part in text.split(","):
        name = part.strip()
        if name and name not in seen:
            seen.append(name)
    return seen


def job_members(spec: EnsembleSpec, models: Iterable[str] | None = None) -> list[str]:
    """The member names a job may run: the config version's members, or the ones the request
    names (``"model": "<member>"`` runs that member alone), as the worker will run them."""
    names = [m.display_name for m in spec.model_specs]
    wanted = set(models or ())
    chosen = [n for n in names if n in wanted] if wanted else names
    return chosen or names
