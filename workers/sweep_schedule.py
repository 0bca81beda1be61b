"""The sweeper's schedule inside the workers: recovery needs no extra process.

Every ``ensemblehub worker`` runs a small thread; each ``sweep_interval_s`` it tries to hold
one Redis key (``SET NX PX``, renewed by its holder only), and the one worker that holds it
runs the sweep. So exactly one worker sweeps at a time across the deployment; when that
worker dies its key expires after ``LEASE_INTERVALS`` intervals and another takes over. A
Celery beat running as well (``ensemblehub up``, compose) only sweeps twice: every step of a
sweep is a conditional update, so nothing is done twice.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any

import redis

log = logging.getLogger(__name__)

LOCK_KEY = "ensemblehub:sweep-leader"
LEASE_INTERVALS = 3
# renew only a lease we hold (compare and expire in one step)
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""


class SweepLeader:
    """Holds (or tries to take) the sweep lease in Redis for one worker process."""

    def __init__(self, client: Any, interval_s: float, owner: str | None = None) -> None:
        self.client, self.interval_s = client, interval_s
        self.owner = owner or uuid.uuid4().hex
        self._renew = client.register_script(_RENEW)

    @property
    def lease_ms(self) -> int:
        return max(1000, int(self.interval_s * LEASE_INTERVALS * 1000))

    def acquire(self) -> bool:
        """True when this process holds the lease now (renewed, or newly taken)."""
        if self._renew(keys=[LOCK_KEY], args=[self.owner, self.lease_ms]):
            return True
        return bool(self.client.set(LOCK_KEY, self.owner, nx=True, px=self.lease_ms))

    def release(self) -> None:
        if self.client.get(LOCK_KEY) == self.owner.encode():
            self.client.delete(LOCK_KEY)


class SweepSchedule:
    """A daemon thread: every interval, sweep if this process is the leader."""

    def __init__(self, leader: SweepLeader, sweep: Callable[[], Any]) -> None:
        self.leader, self._sweep = leader, sweep
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sweep-schedule", daemon=True)

    @classmethod
    def for_broker(cls, broker_url: str, interval_s: float, sweep: Callable[[], Any]) -> SweepSchedule | None:
        """None for a broker that is not Redis (the embedded mode sweeps in its own loop)."""
        if not broker_url.startswith(("redis://", "rediss://", "unix://")):
            return None
        client = redis.Redis.from_url(broker_url, socket_timeout=5, socket_connect_timeout=5)
        return cls(SweepLeader(client, interval_s), sweep)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        try:
            self.leader.release()  # a clean shutdown hands over at once
        except redis.RedisError:
            pass

    def _run(self) -> None:
        while not self._stop.wait(self.leader.interval_s):
            try:
                if self.leader.acquire():
                    self._sweep()
            except Exception as exc:  # noqa: BLE001 - a broker or database blip: next tick
                log.warning("sweep skipped: %s", exc)
