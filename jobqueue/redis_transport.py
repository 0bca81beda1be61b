"""Kombu's Redis transport with one repair, for workers that run tasks in a pool of threads.

When the broker connection drops while tasks are running, the worker closes the connection,
and closing the channel restores its unacknowledged messages. With the threads pool there are
always some (the running jobs, ``acks_late``), and in kombu 5.7 that restore runs after the
channel's pools are gone: it raises ``AttributeError`` ('NoneType' object has no attribute
'hostname'), which Celery reports as an unrecoverable error and the worker process exits (seen
in tests/faults/test_redis_restart.py). The solo pool never met it: its consumer is blocked
while a task runs, so nothing is unacknowledged when it notices the loss.

Skipping that restore loses nothing: the messages are still in Redis' unacked set (restored
after ``visibility_timeout``), the running jobs go on and store their results in Postgres, and
the sweeper re-sends any queued job whose message the broker lost. So the worker logs it and
reconnects instead of dying.
"""

from __future__ import annotations

import logging

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


class Channel(redis.Channel):
    QoS = QoS


class Transport(redis.Transport):
    Channel = Channel
