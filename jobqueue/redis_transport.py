"""Kombu's Redis transport with one repair, for workers that run tasks in a pool of threads,
one saving, and a hook.

When the broker connection drops while tasks are running, the worker closes the connection,
and closing the channel restores its unacknowledged messages. With the threads pool there are
always some (the running jobs, ``acks_late``), and in kombu 5.7 that restore runs after the
channel's pools are gone: it raises ``AttributeError`` ('NoneType' object has no attribute
'hostname'), which Celery reports as an unrecoverable error and the worker process exits (seen
in tests/faults/test_redis_restart.py). The solo pool never met it: its consumer is blocked
while a task runs, so nothing is unacknowledged when it notices the loss.

The same torn-down channel is still used to acknowledge the tasks that were running when the
connection dropped; that ack raises the same ``AttributeError`` when they finish, and kills the
worker too. Such a message can no longer be acknowledged on that connection anyway: Redis
delivers it again after ``visibility_timeout``, and the job's conditional claim skips it.

Skipping that restore or ack loses nothing: the messages are still in Redis' unacked set (restored
after ``visibility_timeout``), the running jobs go on and store their results in Postgres, and
the sweeper re-sends any queued job whose message the broker lost. So the worker logs it and
reconnects instead of dying.

The saving: kombu's channel builds a new ``redis.Redis`` client for every command it sends
outside its event loop (each ack, each publish: ``conn_or_acquire``), and a client's
construction (its table of response callbacks) cost a worker ~5% of its CPU per job. The
channel here reuses one client per connection pool; clients are thread-safe, and a pool
kombu replaces (after a reconnect) gets a new client.

It also lets ``jobqueue.redis_publisher`` catch a message where the channel would push it
(:func:`catching_puts`), to make a template of Celery's own message without sending it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from kombu.transport import redis

log = logging.getLogger(__name__)


class QoS(redis.QoS):
    def restore_unacked_once(self, stderr=None):  # type: ignore[no-untyped-def]
        try:
            return super().restore_unacked_once(stderr)
        except AttributeError as exc:
            log.warning(
                "broker connection lost: unacknowledged messages left to Redis' own restore (%s)", exc
            )
            return None

    def ack(self, delivery_tag):  # type: ignore[no-untyped-def]
        try:
            return super().ack(delivery_tag)
        except AttributeError as exc:
            log.warning("ack of %s on a closed broker connection skipped (%s)", delivery_tag, exc)
            return None

    def reject(self, delivery_tag, requeue=False):  # type: ignore[no-untyped-def]
        try:
            return super().reject(delivery_tag, requeue=requeue)
        except AttributeError as exc:
            log.warning("reject of %s on a closed broker connection skipped (%s)", delivery_tag, exc)
            return None


# per thread (a context of its own each): another thread's sends are pushed as usual
_catch_put: ContextVar[Callable[[Any, str, dict[str, Any]], None] | None] = ContextVar(
    "ensemblehub_catch_put", default=None
)


@contextmanager
def catching_puts(catch: Callable[[Any, str, dict[str, Any]], None]) -> Iterator[None]:
    """While inside, this thread's messages are handed to ``catch(channel, queue, message)``
    (what the channel would LPUSH) instead of pushed."""
    token = _catch_put.set(catch)
    try:
        yield
    finally:
        _catch_put.reset(token)


class Channel(redis.Channel):
    QoS = QoS
    _reused_client: Any = None

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        reused = self._reused_client
        if reused is None or reused.connection_pool is not self._pool:
            reused = self._reused_client = self._create_client()
        yield reused

    def _put(self, queue, message, **kwargs):  # type: ignore[no-untyped-def]
        catch = _catch_put.get()
        if catch is None:
            return super()._put(queue, message, **kwargs)
        kwargs.pop("_publish_batch", None)
        return catch(self, queue, message)


class Transport(redis.Transport):
    Channel = Channel
