"""An API process's reply inbox (jobqueue/reply_inbox.py) on real Redis: one subscription for
the done events of every job the process waits for. A worker's done event published with the
job's ``reply_to`` reaches the waiter registered for that job and nobody else; a cancel on the
cancels channel ends the waiter of a job no worker took; a lost connection makes ``get`` raise
(the waiter polls Postgres), and the inbox subscribes again by itself."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis
from redis.exceptions import RedisError

from jobqueue.events import RedisJobEventBus
from tests import services


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with services.private_redis_db() as url:
        yield url


def _run(coroutine):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coroutine, 30))


def test_a_done_event_reaches_its_waiter_through_the_inbox_only(redis_url: str) -> None:
    bus = RedisJobEventBus(redis_url)

    async def scenario() -> None:
        mine = await bus.open_reply("job_mine")
        other = await bus.open_reply("job_other")
        assert mine is not None and mine.reply_to.startswith("ensemblehub:reply:")
        assert other.reply_to == mine.reply_to  # one channel per process
        done = {"type": "done", "status": "succeeded", "attempt": 1, "final": {"result": {"text": "hi"}}}
        await asyncio.to_thread(bus.publish, "job_mine", done, reply_to=mine.reply_to)
        assert await mine.get(5) == done
        assert await other.get(0.2) is None
        await mine.close()
        await other.close()

    _run(scenario())


def test_a_worker_publishes_to_nothing_but_a_reply_channel(redis_url: str) -> None:
    """``reply_to`` comes from the stored job: anything but a reply channel is ignored."""
    bus = RedisJobEventBus(redis_url)
    listener = redis.Redis.from_url(redis_url).pubsub(ignore_subscribe_messages=True)
    listener.subscribe("elsewhere")
    bus.publish("job_x", {"type": "done", "status": "succeeded"}, reply_to="elsewhere")
    assert listener.get_message(timeout=0.5) is None
    listener.close()


def test_a_cancel_ends_the_waiter_of_a_job_no_worker_took(redis_url: str) -> None:
    bus = RedisJobEventBus(redis_url)

    async def scenario() -> None:
        waiter = await bus.open_reply("job_queued")
        await asyncio.to_thread(bus.publish_cancels, ["job_queued"])
        event = await waiter.get(5)
        assert event is not None and event["status"] == "cancelled" and "attempt" not in event
        await waiter.close()

    _run(scenario())


def test_a_lost_connection_makes_waiters_poll_and_the_inbox_comes_back(redis_url: str) -> None:
    bus = RedisJobEventBus(redis_url)
    admin = redis.Redis.from_url(redis_url)

    async def scenario() -> None:
        waiter = await bus.open_reply("job_a")
        assert waiter is not None
        admin.client_kill_filter(_type="pubsub")
        with pytest.raises(RedisError):
            await waiter.get(5)
        # reconnected within the backoff: a new registration hears its job again
        for _ in range(50):
            again = await bus.open_reply("job_b")
            if again is not None:
                break
            await asyncio.sleep(0.1)
        assert again is not None
        await asyncio.to_thread(
            bus.publish, "job_b", {"type": "done", "status": "failed"}, reply_to=again.reply_to
        )
        assert (await again.get(5))["status"] == "failed"
        await again.close()

    _run(scenario())


def test_the_shutdown_stops_the_inbox_and_a_later_wait_gets_a_new_one(redis_url: str) -> None:
    bus = RedisJobEventBus(redis_url)

    async def scenario() -> None:
        first = await bus.open_reply("job_1")
        assert first is not None
        await bus.close_reply()
        assert not [t for t in asyncio.all_tasks() if t.get_name() == "reply-inbox"]
        second = await bus.open_reply("job_2")
        assert second is not None and second.reply_to != first.reply_to
        await bus.close_reply()

    _run(scenario())
