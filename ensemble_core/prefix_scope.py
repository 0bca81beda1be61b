"""Whose prompts a session may share key/values with (``backends.shared_prefixes``).

A context variable rather than a parameter: every session a job opens (members, scorers,
selection probes, fusers) must get it, wherever it is opened, and the worker knows the tenant
while the engine does not. The worker runs each job inside ``prefix_scope(tenant)``; the
engine's member threads run in a copy of the job's context (``engine.run_parallel``).
Kept free of torch: the worker imports it before any model is loaded.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_SCOPE: ContextVar[str | None] = ContextVar("ensemblehub_prefix_scope", default=None)


@contextmanager
def prefix_scope(scope: str | None) -> Iterator[None]:
    """Sessions opened inside share prefixes only with sessions of the same ``scope``."""
    token = _SCOPE.set(scope)
    try:
        yield
    finally:
        _SCOPE.reset(token)


def current_scope() -> str | None:
    return _SCOPE.get()
