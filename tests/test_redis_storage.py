"""What the Redis broker keeps, on a real redis-server: a message body once per publish, history
reads that survive an entry they cannot decode, and deployments that share a server but not
their messages."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator

import httpx
import msgspec
import pytest

from pushsvc.broker.base import Placed, Publication
from pushsvc.broker.keys import Keyspace
from pushsvc.broker.redis import RedisBroker
from pushsvc.brokers import redis_broker
from pushsvc.settings import Settings
from tests.support import UNIT, RedisServer, start_node, start_redis
from tests.test_broker_contract import Recorder, message
from tests.wire import Wire

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with start_redis() as server:
        yield server


@pytest.fixture
async def broker(redis: RedisServer) -> AsyncIterator[RedisBroker]:
    redis.command("FLUSHALL")
    opened = redis_broker(Settings(redis_url=redis.url, node_id="storage"))
    await opened.start()
    try:
        yield opened
    finally:
        await opened.close()


def used_memory(redis: RedisServer) -> int:
    info = redis.command("INFO", "memory")
    return int(next(line for line in info.splitlines() if line.startswith("used_memory:"))[12:])


async def test_a_body_is_stored_once_however_many_streams_hold_it(
    redis: RedisServer, broker: RedisBroker
) -> None:
    users = [f"user:s{i}" for i in range(200)]
    await broker.publish([Publication(message(), [u]) for u in users], "n")  # streams exist
    big = message(data={"report": "x" * 20_000})
    before = used_memory(redis)
    (placed,) = await broker.publish([Publication(big, users)], "n")
    grown = used_memory(redis) - before
    assert isinstance(placed, Placed)
    assert grown < 200_000, grown  # one copy per stream: 200 x 20 KB = 4 MB
    reads = await broker.history.read_many([(u, placed.offsets[u]) for u in users], 10)
    assert reads == [[] for _ in users]  # nothing after it
    reads = await broker.history.read_many([(u, None) for u in users], 10)
    assert [got[-1].message for got in reads] == [big] * len(users)
    assert int(redis.command("XLEN", broker.keys.stream(users[0]))) == 2


async def test_an_entry_that_does_not_decode_is_skipped_and_counted(
    redis: RedisServer, broker: RedisBroker
) -> None:
    from pushsvc.telemetry import metrics

    good = [message(), message()]
    stream = broker.keys.stream("user:g")
    await broker.publish([Publication(good[0], ["user:g"])], "n")
    redis.command("XADD", stream, "*", "m", "{not json")
    redis.command("XADD", stream, "*", "x", "no message field")
    redis.command("XADD", stream, "*", "m", '{"id":"wrong shape"}')
    await broker.publish([Publication(good[1], ["user:g"])], "n")
    counted = metrics.history_undecodable._value.get()
    assert [e.message for e in await broker.history.read("user:g", None, 10)] == good
    assert metrics.history_undecodable._value.get() == counted + 3


def test_a_device_is_welcomed_despite_an_undecodable_entry(redis: RedisServer) -> None:
    user = f"p{secrets.token_hex(3)}"
    stream = Keyspace().stream(f"user:{user}")
    with start_node(redis_url=redis.url) as node:
        first = node.publish({"to": {"users": [user]}, "event": "a", "data": 1})
        redis.command("XADD", stream, "*", "m", "garbage")
        second = node.publish(
            {
                "to": {
                    "users": [user],
                },
                "event": "b",
                "data": 2,
            }
        )

        async def connect() -> list[str]:
            wire = await Wire.open(node.client_url, node.token(user), device="phone")
            got = await wire.messages(2)
            await wire.silent(0.3 * UNIT)
            await wire.close()
            return [m["id"] for m in got]

        assert asyncio.run(connect()) == [first["id"], second["id"]]
        text = httpx.get(node.internal_url + "/metrics", timeout=5 * UNIT).text
        assert "pushsvc_history_undecodable_total 1.0" in text


async def test_deployments_on_one_redis_never_hear_each_other(redis: RedisServer) -> None:
    """Another database, or another prefix: its own channels (pub/sub spans databases)."""
    recorders = [Recorder() for _ in range(3)]
    brokers = [
        redis_broker(Settings(redis_url=redis.url, node_id="a")),
        redis_broker(Settings(redis_url=redis.url.removesuffix("/0") + "/1", node_id="b")),
        redis_broker(Settings(redis_url=redis.url, node_id="c"), prefix="other:"),
    ]
    for b, rec in zip(brokers, recorders, strict=True):
        b.bus.subscribe(rec.envelope, rec.command, rec.resync)
        await b.start()
        await b.bus.follow(["user:same"])
    try:
        sent = [message() for _ in brokers]
        for b, m in zip(brokers, sent, strict=True):
            await b.publish([Publication(m, ["user:same"])], b.keys.prefix)
        for rec in recorders:
            await rec.until(lambda rec=rec: len(rec.envelopes) >= 1)
        await asyncio.sleep(0.2 * UNIT)
        assert [[e.message for e in rec.envelopes] for rec in recorders] == [[m] for m in sent]
        reads = [await b.history.read("user:same", None, 10) for b in brokers]
        assert [[e.message for e in got] for got in reads] == [[m] for m in sent]
        assert len({b.keys.stream_channel("user:same") for b in brokers}) == 3
    finally:
        for b in brokers:
            await b.close()


@pytest.mark.parametrize("apart", ["database", "prefix"])
def test_two_deployments_on_one_redis(redis: RedisServer, apart: str) -> None:
    user = f"p{secrets.token_hex(3)}"
    other = {"redis_url": redis.url.removesuffix("/0") + "/1"}
    if apart == "prefix":
        other = {"redis_url": redis.url, "redis_prefix": "hospital-b:"}
    with start_node(redis_url=redis.url) as a, start_node(**other) as b:

        async def run() -> tuple[list[str], list[str]]:
            on_a = await Wire.open(a.client_url, a.token(user), device="phone")
            on_b = await Wire.open(b.client_url, b.token(user), device="phone")
            sent_a = a.publish({"to": {"users": [user]}, "event": "a", "data": 1})
            sent_b = b.publish({"to": {"users": [user]}, "event": "b", "data": 2})
            got_a = [m["id"] for m in await on_a.messages(1)]
            got_b = [m["id"] for m in await on_b.messages(1)]
            await on_a.silent(0.5 * UNIT)
            await on_b.silent(0.5 * UNIT)
            await on_a.close()
            await on_b.close()
            assert msgspec.json.encode(got_a) != msgspec.json.encode(got_b)
            return [sent_a["id"], sent_b["id"]], got_a + got_b

        sent, got = asyncio.run(run())
        assert got == sent
