"""jobqueue.redis_transport: the channel reuses one Redis client per connection pool (kombu's
builds one per command), and messages still go through it."""

from __future__ import annotations

from kombu import Connection

from tests import services


def test_the_channel_reuses_one_client_until_its_pool_is_replaced():
    with (
        services.private_redis_db() as url,
        Connection(url, transport="jobqueue.redis_transport:Transport") as conn,
    ):
        channel = conn.default_channel
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second
        queue = conn.SimpleQueue("transport-test")
        queue.put({"n": 1})  # a publish and an ack through the reused client
        message = queue.get(timeout=5)
        assert message.payload == {"n": 1}
        message.ack()
        queue.close()
        channel._disconnect_pools()  # what a reconnect does: the next command needs a new pool
        with channel.conn_or_acquire() as third:
            assert third is not first
            assert third.connection_pool is channel._pool
            assert third.ping()
