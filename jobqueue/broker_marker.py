"""Did the broker lose its messages? A marker key tells.

Redis restarted without persistence (or flushed) has lost every message it held: tasks of
queued jobs that no worker will ever receive. The sweeper keeps one marker key in the broker;
when it is gone, so is everything that was sent before, and every queued job must be sent
again (a duplicate is harmless: a job is claimed once). With persistence the marker survives
along with the messages, and nothing is sent twice.
"""

from __future__ import annotations

import uuid

MARKER_KEY = "ensemblehub:broker-marker"


def _client(broker_url: str):  # type: ignore[no-untyped-def]
    import redis

    return redis.Redis.from_url(broker_url, socket_connect_timeout=2, socket_timeout=5)


def broker_lost_messages(broker_url: str) -> bool:
    """True when the marker is missing: messages sent before now may be gone. Call
    :func:`set_broker_marker` once they are accounted for. False for non-Redis brokers."""
    if not broker_url.startswith(("redis://", "rediss://")):
        return False
    client = _client(broker_url)
    try:
        return not client.exists(MARKER_KEY)
    finally:
        client.close()


def set_broker_marker(broker_url: str) -> None:
    if not broker_url.startswith(("redis://", "rediss://")):
        return
    client = _client(broker_url)
    try:
        client.set(MARKER_KEY, uuid.uuid4().hex)
    finally:
        client.close()
