"""Job events from workers to the API: accepted segments (for streaming) and the final state.

On Redis this is pub/sub (one channel per job, and one for the cancels of all jobs, which the
workers hear: ``publish_cancels``/``subscribe_cancels``). In embedded mode, where API and worker share
one process, an in-memory bus does the same. Events are a fast path only: Postgres stays the
truth, so a waiter that misses an event still finds the final state by reading the job.

The API waits with ``subscribe_async``: an asyncio subscription (redis.asyncio, or a queue fed
from the worker threads), so a waiting request holds no thread, only a coroutine.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import queue
import threading
import time
import weakref
from collections import defaultdict
from collections.abc import Iterator
from typing import Any, Protocol

import anyio

from jobqueue.contract import JOB_CANCELS_CHANNEL, is_reply_channel, job_events_channel


def cancel_event() -> dict[str, Any]:
    """What the API publishes on a job's channel when it cancels the job: its waiters end. It
    carries no ``attempt``: it is no worker's event. The worker running the job hears the same
    cancel on the cancels channel (``publish_cancels``; ``workers.job_watch``)."""
    return {"type": "done", "status": "cancelled"}


def cancelled_job_ids(message: dict[str, Any]) -> list[str]:
    """The job ids of a message on the cancels channel (``publish_cancels``)."""
    ids = message.get("job_ids")
    return [str(i) for i in ids] if isinstance(ids, list) else []


class JobEventBus(Protocol):
    def publish(self, job_id: str, event: dict[str, Any], *, reply_to: str | None = None) -> None: ...

    def subscribe(self, job_id: str) -> JobSubscription: ...

    def publish_cancels(self, job_ids: list[str]) -> None: ...

    def subscribe_cancels(self) -> JobSubscription: ...


class JobSubscription(Protocol):
    def get(self, timeout: float) -> dict[str, Any] | None: ...

    def close(self) -> None: ...

    def __enter__(self) -> JobSubscription: ...

    def __exit__(self, *exc: object) -> None: ...


class AsyncJobSubscription(Protocol):
    async def get(self, timeout: float) -> dict[str, Any] | None: ...

    async def close(self) -> None: ...


def _without_client_setinfo(client_class: Any) -> dict[str, Any]:
    """Client options that skip ``CLIENT SETINFO`` (two round trips) on every new connection:
    each subscription opens one (a waiting request, a worker's cancel subscription), and on
    redis.asyncio the two cost ~0.6 ms of a subscription's ~1.6 ms. redis-py >= 7 names the
    option ``driver_info``, older ones ``lib_name``/``lib_version``."""
    if "driver_info" in inspect.signature(client_class.__init__).parameters:
        return {"driver_info": None}
    return {"lib_name": None, "lib_version": None}


class RedisJobEventBus:
    def __init__(self, url: str) -> None:
        import redis

        self._url = url
        self._redis = redis.Redis.from_url(
            url,
            socket_connect_timeout=2,
            socket_timeout=5,
            health_check_interval=10,
            **_without_client_setinfo(redis.Redis),
        )
        # redis.asyncio connections belong to the event loop that opened them: one client per loop
        self._async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
            weakref.WeakKeyDictionary()
        )
        self._inboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()

    def publish(self, job_id: str, event: dict[str, Any], *, reply_to: str | None = None) -> None:
        """``reply_to``: also to this API process's inbox (``jobqueue.reply_inbox``), in the
        same round trip."""
        body = json.dumps(event)
        if reply_to is None or not is_reply_channel(reply_to):
            self._redis.publish(job_events_channel(job_id), body)
            return
        pipe = self._redis.pipeline(transaction=False)
        pipe.publish(job_events_channel(job_id), body)
        # the event (a done event carries the result) is encoded once, for both channels
        pipe.publish(reply_to, f'{{"job_id": {json.dumps(job_id)}, "event": {body}}}')
        pipe.execute()

    async def open_reply(self, job_id: str) -> Any:
        """The job's done event through this process's reply inbox, or None while the inbox
        is not subscribed (see ``jobqueue.reply_inbox``)."""
        from jobqueue.reply_inbox import ReplyInbox

        loop = asyncio.get_running_loop()
        inbox = self._inboxes.get(loop)
        if inbox is None:
            inbox = self._inboxes[loop] = ReplyInbox(self._async_client())
        return await inbox.open(job_id)

    async def close_reply(self) -> None:
        """Stop this event loop's reply inbox (the API's shutdown)."""
        inbox = self._inboxes.pop(asyncio.get_running_loop(), None)
        if inbox is not None:
            await inbox.close()

    def subscribe(self, job_id: str) -> _RedisSubscription:
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(job_events_channel(job_id))
        return _RedisSubscription(pubsub)

    def publish_cancels(self, job_ids: list[str]) -> None:
        self._redis.publish(JOB_CANCELS_CHANNEL, json.dumps({"job_ids": list(job_ids)}))

    def subscribe_cancels(self) -> _RedisSubscription:
        """Returns once Redis has confirmed the subscription: every cancel published after this
        returns is heard (``workers.job_watch`` relies on it for the jobs it claims next)."""
        pubsub = self._redis.pubsub()
        try:
            pubsub.subscribe(JOB_CANCELS_CHANNEL)
            confirmed = pubsub.get_message(timeout=2.0)
            if not confirmed or confirmed.get("type") != "subscribe":
                raise TimeoutError(f"Redis did not confirm the subscription to {JOB_CANCELS_CHANNEL}")
        except BaseException:
            _RedisSubscription(pubsub).close()
            raise
        pubsub.ignore_subscribe_messages = True
        return _RedisSubscription(pubsub)

    async def subscribe_async(self, job_id: str) -> _AsyncRedisSubscription:
        pubsub = self._async_client().pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(job_events_channel(job_id))
        except BaseException:
            await _AsyncRedisSubscription(pubsub).close()
            raise
        return _AsyncRedisSubscription(pubsub)

    def _async_client(self) -> Any:
        import redis.asyncio

        loop = asyncio.get_running_loop()
        client = self._async_clients.get(loop)
        if client is None:
            client = self._async_clients[loop] = redis.asyncio.Redis.from_url(
                self._url,
                socket_connect_timeout=2,
                socket_timeout=5,
                health_check_interval=10,
                **_without_client_setinfo(redis.asyncio.Redis),
            )
        return client

    def ping(self) -> None:
        self._redis.ping()


class _AsyncRedisSubscription:
    def __init__(self, pubsub: Any) -> None:
        self._pubsub = pubsub

    async def get(self, timeout: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            message = await self._pubsub.get_message(timeout=remaining)
            if message and message.get("type") == "message":
                return json.loads(message["data"])  # type: ignore[no-any-return]

    async def close(self) -> None:
        # shielded: a client that disconnects cancels the waiter, and the connection must
        # still go back to the pool
        with anyio.CancelScope(shield=True):
            try:
                await self._pubsub.aclose()
            except Exception:  # noqa: BLE001 - closing a broken connection must not mask the real error
                pass


class _RedisSubscription:
    def __init__(self, pubsub: Any) -> None:
        self._pubsub = pubsub

    def get(self, timeout: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            message = self._pubsub.get_message(timeout=remaining)
            if message and message.get("type") == "message":
                return json.loads(message["data"])

    def close(self) -> None:
        try:
            self._pubsub.close()
        except Exception:  # noqa: BLE001 - closing a broken connection must not mask the real error
            pass

    def __enter__(self) -> _RedisSubscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class InMemoryJobEventBus:
    """Same-process bus for embedded mode (a subscription costs no round trip here, so it has
    no reply inbox: ``publish`` ignores ``reply_to``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: dict[str, list[queue.Queue[dict[str, Any]]]] = defaultdict(list)

    def publish(self, job_id: str, event: dict[str, Any], *, reply_to: str | None = None) -> None:
        with self._lock:
            targets = list(self._subscribers.get(job_id, ()))
        for q in targets:
            q.put(event)

    def subscribe(self, job_id: str) -> _MemorySubscription:
        q: queue.Queue[dict[str, Any]] = queue.Queue()
        with self._lock:
            self._subscribers[job_id].append(q)
        return _MemorySubscription(self, job_id, q)

    # the cancels channel is one more key among the job ids (no job id looks like it)
    def publish_cancels(self, job_ids: list[str]) -> None:
        self.publish(JOB_CANCELS_CHANNEL, {"job_ids": list(job_ids)})

    def subscribe_cancels(self) -> _MemorySubscription:
        return self.subscribe(JOB_CANCELS_CHANNEL)

    async def subscribe_async(self, job_id: str) -> _AsyncMemorySubscription:
        sub = _AsyncMemorySubscription(self, job_id)
        with self._lock:
            self._subscribers[job_id].append(sub)  # type: ignore[arg-type]
        return sub

    def _unsubscribe(self, job_id: str, q: Any) -> None:
        with self._lock:
            subs = self._subscribers.get(job_id, [])
            if q in subs:
                subs.remove(q)
            if not subs:
                self._subscribers.pop(job_id, None)

    def ping(self) -> None:
        return None


class _MemorySubscription:
    def __init__(self, bus: InMemoryJobEventBus, job_id: str, q: queue.Queue[dict[str, Any]]) -> None:
        self._bus, self._job_id, self._q = bus, job_id, q

    def get(self, timeout: float) -> dict[str, Any] | None:
        try:
            return self._q.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None

    def close(self) -> None:
        self._bus._unsubscribe(self._job_id, self._q)

    def __enter__(self) -> _MemorySubscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _AsyncMemorySubscription:
    """Events published from worker threads are handed to the waiter's event loop."""

    def __init__(self, bus: InMemoryJobEventBus, job_id: str) -> None:
        self._bus, self._job_id = bus, job_id
        self._loop = asyncio.get_running_loop()
        self._q: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def put(self, event: dict[str, Any]) -> None:  # called by ``publish``, from any thread
        try:
            self._loop.call_soon_threadsafe(self._q.put_nowait, event)
        except RuntimeError:  # the waiter's loop is closed: nobody listens any more
            pass

    async def get(self, timeout: float) -> dict[str, Any] | None:
        try:
            return await asyncio.wait_for(self._q.get(), max(0.0, timeout))
        except TimeoutError:
            return None

    async def close(self) -> None:
        self._bus._unsubscribe(self._job_id, self)


# one bus per process in embedded mode: the API and the in-process worker must share it
_MEMORY_BUS = InMemoryJobEventBus()


def event_bus_for(broker_url: str) -> RedisJobEventBus | InMemoryJobEventBus:
    if broker_url.startswith(("redis://", "rediss://")):
        return RedisJobEventBus(broker_url)
    return _MEMORY_BUS


def iter_events(
    sub: JobSubscription, *, deadline: float, poll_s: float = 1.0
) -> Iterator[dict[str, Any] | None]:
    """Yield events until the deadline; yields None every ``poll_s`` so callers can re-check the DB."""
    while time.monotonic() < deadline:
        yield sub.get(min(poll_s, max(0.0, deadline - time.monotonic())))
