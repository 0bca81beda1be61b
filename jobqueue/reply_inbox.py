"""One reply channel per API process: the done events of the jobs it waits for, without a
subscription per job.

Why: a synchronous request used to open a Redis subscription on its job's channel before the
job was sent, and close it after: a connection checkout, a SUBSCRIBE round trip and an
UNSUBSCRIBE, 0.7 ms of a request whose whole service overhead is to stay under 10 ms. Here the
process subscribes once, to its own channel (``reply_channel``); a request registers its job id
(a dict insert, no round trip), stores the channel in the job (``request["reply_to"]``), and the
worker publishes the job's done event there too, in the same pipeline as on the job's channel
(``RedisJobEventBus.publish(..., reply_to=)``). Nothing is missed: the channel is subscribed
before any job names it, and a job is registered before its task is sent. The inbox listens
on the cancels channel too (one message per cancel, with the job ids), so a waiter whose job
is cancelled before a worker took it ends at once, as it did on the job's channel.

Events stay a fast path only: a waiter whose inbox lost its connection gets a ``RedisError``
from ``get``, as from a subscription of its own, and polls Postgres (``JobEvents``); the inbox
reconnects by itself, and a job submitted meanwhile uses a subscription of its own.
Streams keep their per-job subscription: they need every segment event, not only the end.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError

from jobqueue.contract import JOB_CANCELS_CHANNEL, reply_channel
from jobqueue.events import cancel_event

log = logging.getLogger(__name__)

RECONNECT_S = (0.1, 0.5, 1.0, 2.0)  # waits between attempts; the last one repeats


class ReplyInbox:
    """Owned by one event loop (redis.asyncio connections belong to the loop that opened them)."""

    def __init__(self, client: Any) -> None:
        self.channel = reply_channel(uuid.uuid4().hex)
        self._client = client
        self._waiters: dict[str, asyncio.Queue[dict[str, Any] | None]] = {}
        self._ready = False  # subscribed now: a job may name the channel
        self._task: asyncio.Task[None] | None = None
        self._subscribed: asyncio.Event | None = None

    async def open(self, job_id: str) -> InboxSubscription | None:
        """The job's done event as a subscription, or None while the inbox is not subscribed
        (the caller then subscribes to the job's own channel)."""
        if self._task is None:
            self._subscribed = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._read(), name="reply-inbox")
            try:
                await asyncio.wait_for(self._subscribed.wait(), 1.0)
            except TimeoutError:
                pass
        if not self._ready:
            return None
        waiter: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._waiters[job_id] = waiter
        return InboxSubscription(self, job_id, waiter)

    def _forget(self, job_id: str) -> None:
        self._waiters.pop(job_id, None)

    async def _read(self) -> None:
        attempt = 0
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                # the cancels channel too: a cancel's event goes to the job's own channel and
                # this one (``publish_cancels``), not to the process waiting for the job
                await pubsub.subscribe(self.channel, JOB_CANCELS_CHANNEL)
                self._ready, attempt = True, 0
                assert self._subscribed is not None
                self._subscribed.set()
                while True:
                    message = await pubsub.get_message(timeout=30.0)
                    if message and message.get("type") == "message":
                        self._deliver(_channel(message), json.loads(message["data"]))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - reconnect; waiters fall back to Postgres
                if self._ready:
                    log.warning("reply inbox lost its Redis connection (%s); reconnecting", exc)
                self._ready = False
                for waiter in self._waiters.values():
                    waiter.put_nowait(None)  # None: lost, see InboxSubscription.get
                self._waiters.clear()
            finally:
                try:
                    await pubsub.aclose()
                except Exception:  # noqa: BLE001 - a broken connection must not stop the reconnects
                    pass
            await asyncio.sleep(RECONNECT_S[min(attempt, len(RECONNECT_S) - 1)])
            attempt += 1

    def _deliver(self, channel: str, message: dict[str, Any]) -> None:
        if channel == JOB_CANCELS_CHANNEL:
            for job_id in message.get("job_ids") or ():
                waiter = self._waiters.get(str(job_id))
                if waiter is not None:
                    waiter.put_nowait(cancel_event())
            return
        waiter = self._waiters.get(str(message.get("job_id")))
        event = message.get("event")
        if waiter is not None and isinstance(event, dict):
            waiter.put_nowait(event)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - shutting down
                pass
            self._task = None


def _channel(message: dict[str, Any]) -> str:
    channel = message.get("channel")
    return channel.decode() if isinstance(channel, bytes) else str(channel)


class InboxSubscription:
    """One job's done event from its process's inbox; the ``AsyncJobSubscription`` interface."""

    def __init__(self, inbox: ReplyInbox, job_id: str, waiter: asyncio.Queue[dict[str, Any] | None]) -> None:
        self._inbox, self._job_id, self._waiter = inbox, job_id, waiter
        self.reply_to = inbox.channel

    async def get(self, timeout: float) -> dict[str, Any] | None:
        try:
            # asyncio.timeout, not wait_for: no task of its own around the get (Python 3.11)
            async with asyncio.timeout(max(0.0, timeout)):
                event = await self._waiter.get()
        except TimeoutError:
            return None
        if event is None:
            raise RedisConnectionError("the reply inbox lost its Redis connection")
        return event

    async def close(self) -> None:
        self._inbox._forget(self._job_id)
