"""The Redis broker when Redis goes away: fast failures, then resubscription and a resync.

Each test has a redis-server of its own, which it stops, restarts, freezes or whose pub/sub
clients it kills.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from pushsvc.broker.base import Command, Placed, Publication
from pushsvc.broker.redis import RedisBroker
from pushsvc.brokers import redis_broker
from pushsvc.core import offsets
from pushsvc.errors import BrokerUnavailable
from pushsvc.settings import Settings
from tests.support import UNIT, RedisServer
from tests.test_broker_contract import Recorder, message, publish

pytestmark = pytest.mark.redis


@pytest.fixture
async def subscribed(server: RedisServer) -> AsyncIterator[tuple[RedisBroker, Recorder]]:
    rec = Recorder()
    broker = redis_broker(Settings(redis_url=server.url, node_id="faults"))
    broker.bus.subscribe(rec.envelope, rec.command, rec.resync)
    await broker.start()
    await broker.bus.follow(["user:p"])
    try:
        yield broker, rec
    finally:
        await broker.close()


def operations(broker: RedisBroker) -> list[Callable[[], Awaitable[Any]]]:
    """One call into every part of the broker."""
    return [
        lambda: publish(broker, [(message(), ["user:p"])], origin="faults"),
        lambda: broker.history.read("user:p", None, 10),
        lambda: broker.history.last_offset("user:p"),
        lambda: broker.bus.send_command(Command(kind="drain", node="x")),
        broker.registry.nodes,
        lambda: broker.registry.find_session("s1"),
        lambda: broker.ledger.trail("m1"),
        lambda: broker.ledger.acked_ids("phone", ["m1"]),
        lambda: broker.publish([Publication(message(), ["user:p"], "c:k", "f")], "faults"),
    ]


async def assert_unavailable_fast(broker: RedisBroker, within: float, sample: int = 0) -> None:
    """Every operation (or the first ``sample``) raises BrokerUnavailable ``within`` seconds."""
    for operation in operations(broker)[: sample or None]:
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable):
            await operation()
        assert time.monotonic() - started < within


async def assert_delivers(broker: RedisBroker, rec: Recorder) -> None:
    await broker.bus.follow(["user:p"])
    before = len(rec.envelopes)
    placed = await publish(broker, [(message(), ["user:p"])], origin="faults")
    await rec.until(lambda: len(rec.envelopes) > before)
    assert rec.envelopes[-1].offsets == placed[0]


async def test_stopped_redis_fails_fast_then_the_bus_resyncs(
    server: RedisServer, subscribed: tuple[RedisBroker, Recorder]
) -> None:
    broker, rec = subscribed
    assert broker.up
    await assert_delivers(broker, rec)
    server.stop()
    await rec.until(lambda: not broker.up, 2 * UNIT)
    await assert_unavailable_fast(broker, 2 * UNIT)
    assert not broker.up and rec.resyncs == 0
    server.start()
    await rec.until(lambda: broker.up and rec.resyncs == 1, 10 * UNIT)
    await assert_delivers(broker, rec)  # the publish script is loaded again as needed
    assert rec.resyncs == 1


async def test_a_stream_followed_while_redis_is_down_is_followed_once_it_is_back(
    server: RedisServer, subscribed: tuple[RedisBroker, Recorder]
) -> None:
    """follow() cannot be confirmed while Redis is away: it says so in bounded time, and the
    stream stays wanted, so the next subscription takes it."""
    broker, rec = subscribed
    server.stop()
    await rec.until(lambda: not broker.up, 2 * UNIT)
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable):
        await broker.bus.follow(["user:late"])
    assert time.monotonic() - started < 5 * UNIT
    server.start()
    await rec.until(lambda: broker.up and rec.resyncs == 1, 10 * UNIT)
    late = message()
    await publish(broker, [(late, ["user:late"])], origin="faults")
    await rec.until(lambda: late.id in {e.message.id for e in rec.envelopes})


async def test_killed_subscription_is_reestablished(
    server: RedisServer, subscribed: tuple[RedisBroker, Recorder]
) -> None:
    broker, rec = subscribed
    await assert_delivers(broker, rec)
    for kills in (1, 2):
        assert server.command("CLIENT", "KILL", "TYPE", "pubsub").strip() == "1"
        await rec.until(lambda: rec.resyncs == kills and broker.up, 5 * UNIT)  # noqa: B023
        await assert_delivers(broker, rec)


async def test_a_frozen_redis_is_noticed_and_survived(
    server: RedisServer, subscribed: tuple[RedisBroker, Recorder]
) -> None:
    broker, rec = subscribed
    assert server.proc is not None
    await asyncio.sleep(2.5)  # idle: the bus PINGs and is answered, it stays subscribed
    assert (broker.bus.subscriptions, rec.resyncs, broker.up) == (1, 0, True)
    server.proc.send_signal(signal.SIGSTOP)  # connections stay open, nothing answers
    try:
        # no command is sent: the bus finds out by itself (PING after 1 s idle, 2 s to answer)
        await rec.until(lambda: not broker.bus.connected, 4 * UNIT)
        assert not broker.up
        await assert_unavailable_fast(broker, 1.5 * UNIT, sample=3)  # each one waits a timeout
    finally:
        server.proc.send_signal(signal.SIGCONT)
    await rec.until(lambda: broker.up and rec.resyncs >= 1, 10 * UNIT)
    await assert_delivers(broker, rec)


async def test_bad_bus_messages_and_failing_callbacks_do_not_stop_the_bus(
    server: RedisServer,
) -> None:
    got: list[str] = []

    def on_envelope(envelope: Any) -> None:
        got.append(envelope.message.id)
        if len(got) == 1:
            raise RuntimeError("a subscriber bug")

    broker = redis_broker(Settings(redis_url=server.url, node_id="robust"))
    broker.bus.subscribe(on_envelope, lambda _: None)
    await broker.start()
    try:
        await broker.bus.follow(["user:p"])
        server.command("PUBLISH", broker.keys.stream_channel("user:p"), "not json")
        server.command("PUBLISH", broker.keys.commands, '{"kind": 1}')
        first, second = message(), message()
        await publish(broker, [(first, ["user:p"]), (second, ["user:p"])], origin="robust")
        await Recorder().until(lambda: len(got) == 2)
        assert got == [first.id, second.id]
        assert broker.bus.subscriptions == 1 and broker.up
    finally:
        await broker.close()


@pytest.mark.parametrize(
    ("after", "start"),
    [
        (None, "-"),
        ("0-0", "(0-0"),
        ("1700000000000-7", "(1700000000000-7"),
        (f"5-{2**64 - 1}", "6-0"),
        (f"{2**64 - 1}-{2**64 - 1}", None),
        (f"{2**64}-0", None),
    ],
)
def test_history_range_start(after: str | None, start: str | None) -> None:
    assert offsets.range_start(after) == start


async def test_starting_while_redis_is_down(server: RedisServer) -> None:
    server.stop()
    rec = Recorder()
    broker = redis_broker(Settings(redis_url=server.url, node_id="early"))
    broker.bus.subscribe(rec.envelope, rec.command, rec.resync)
    started = time.monotonic()
    await broker.start()
    try:
        assert time.monotonic() - started < 3 * UNIT
        assert not broker.up
        await assert_unavailable_fast(broker, 2 * UNIT)
        server.start()
        await rec.until(lambda: broker.up and rec.resyncs == 1, 10 * UNIT)
        await assert_delivers(broker, rec)
    finally:
        await broker.close()
    assert not broker.up


async def test_close_stops_the_reader_and_frees_every_connection(server: RedisServer) -> None:
    brokers = [redis_broker(Settings(redis_url=server.url, node_id=f"n{i}")) for i in range(3)]
    for broker in brokers:
        await broker.start()
        await broker.registry.nodes()
    assert len(server.command("CLIENT", "LIST").strip().splitlines()) >= 7  # 2 per broker + cli
    for broker in brokers:
        await broker.close()
        await broker.close()
    await asyncio.sleep(0.2 * UNIT)
    listed = server.command("CLIENT", "LIST").strip().splitlines()
    assert len(listed) == 1, listed  # only redis-cli itself


async def test_a_keyed_publish_lost_to_a_frozen_redis_is_found_by_its_retry(
    server: RedisServer, subscribed: tuple[RedisBroker, Recorder]
) -> None:
    """The reply comes after the deadline: the publish raises, Redis appends when it wakes, and
    a retry with the same key (a new message id) gets the first message's placement."""
    broker, rec = subscribed
    assert server.proc is not None
    first, retry = message(), message()
    # the command connection is open and the script loaded: the publish goes out and runs
    await publish(broker, [(message(), ["user:warm-up"])], origin="faults")
    server.proc.send_signal(signal.SIGSTOP)
    try:
        with pytest.raises(BrokerUnavailable):
            await broker.publish([Publication(first, ["user:lost"], "c:k", "f")], "faults")
    finally:
        server.proc.send_signal(signal.SIGCONT)
    await rec.until(lambda: broker.bus.connected, 10 * UNIT)  # Redis answers again
    (placed,) = await broker.publish([Publication(retry, ["user:lost"], "c:k", "f")], "faults")
    assert isinstance(placed, Placed)
    assert (placed.id, placed.duplicate) == (first.id, True)
    kept = await broker.history.read("user:lost", None, 10)
    assert [(e.offset, e.message.id) for e in kept] == [(placed.offsets["user:lost"], first.id)]
    assert await broker.ledger.trail(retry.id) is None
