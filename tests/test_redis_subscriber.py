"""The bus subscriber's connection (pushsvc/broker/redis/subscriber.py) against a real
redis-server: it logs in with the URL's password and database, reads pub/sub messages in order
(also past the point where it stops reading the socket), times a read out with None, and a
connection that is killed or closed fails every call after it with a redis-py ConnectionError."""

from __future__ import annotations

import asyncio
import math

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from pushsvc.broker.redis import subscriber
from pushsvc.broker.redis.link import Link
from pushsvc.broker.redis.url import parse
from tests.support import UNIT, RedisServer

pytestmark = pytest.mark.redis


async def subscribed(link: Link, channel: str) -> subscriber.Subscriber:
    connection = await link.subscriber()
    assert isinstance(connection, subscriber.Subscriber)
    await connection.send_command("SUBSCRIBE", channel, check_health=False)
    assert await connection.read_response(timeout=UNIT) == [b"subscribe", channel.encode(), 1]
    return connection


async def test_logs_in_with_the_urls_password_and_database(server: RedisServer) -> None:
    admin = Link(server.url)
    try:
        await admin.call("CONFIG", "SET", "requirepass", "s3cret")
        link = Link(f"redis://default:s3cret@127.0.0.1:{server.port}/3")
        connection = await link.subscriber()
        try:
            await connection.send_command("CLIENT", "INFO")
            info = await connection.read_response(timeout=UNIT)
            assert b" db=3 " in info
            assert b" user=default " in info
        finally:
            await connection.disconnect()
            await link.aclose()
        wrong = Link(f"redis://:nope@127.0.0.1:{server.port}/0")
        try:
            with pytest.raises(RedisConnectionError, match="refused"):
                await wrong.subscriber()
        finally:
            await wrong.aclose()
    finally:
        await admin.aclose()


async def test_messages_arrive_in_order_also_past_the_high_water_mark(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(subscriber, "HIGH_WATER", 8)  # the socket pauses and resumes many times
    link = Link(server.url)
    connection = await subscribed(link, "ch")
    try:
        await link.pipeline([("PUBLISH", "ch", str(i)) for i in range(500)])
        for i in range(500):
            assert await connection.read_response(timeout=UNIT) == [b"message", b"ch", b"%d" % i]
        assert await connection.read_response(timeout=0.05 * UNIT) is None  # nothing more
    finally:
        await connection.disconnect()
        await link.aclose()


async def test_a_killed_connection_fails_the_waiting_reader(server: RedisServer) -> None:
    link = Link(server.url)
    connection = await subscribed(link, "ch")
    try:
        reader = asyncio.ensure_future(connection.read_response(timeout=math.inf))
        await asyncio.sleep(0.05 * UNIT)
        assert not reader.done()  # no timer: it waits for as long as it takes
        assert await link.call("CLIENT", "KILL", "TYPE", "pubsub") == 1
        with pytest.raises(RedisConnectionError, match="lost"):
            await asyncio.wait_for(reader, UNIT)
        with pytest.raises(RedisConnectionError):
            await connection.send_command("PING")
    finally:
        await connection.disconnect()
        await link.aclose()


async def test_disconnect_ends_a_pending_read_and_every_call_after_it(server: RedisServer) -> None:
    link = Link(server.url)
    connection = await subscribed(link, "ch")
    try:
        reader = asyncio.ensure_future(connection.read_response(timeout=math.inf))
        await asyncio.sleep(0)
        await connection.disconnect(nowait=True)
        with pytest.raises(RedisConnectionError):
            await asyncio.wait_for(reader, UNIT)
        with pytest.raises(RedisConnectionError, match="closed"):
            await connection.send_command("PING")
        with pytest.raises(RedisConnectionError, match="closed"):
            await connection.read_response(timeout=UNIT)
        await connection.disconnect()  # idempotent
    finally:
        await link.aclose()


async def test_nothing_listening_is_a_connection_error(server: RedisServer) -> None:
    target = parse(f"redis://127.0.0.1:{server.port}/0")
    server.stop()
    connection = subscriber.Subscriber(target, target.addresses[0], 0.5 * UNIT)
    with pytest.raises(RedisConnectionError, match="could not connect"):
        await connection.connect()
    await connection.disconnect()
