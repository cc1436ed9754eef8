"""The broker contract: one suite, run unchanged against MemoryBroker and RedisBroker.

The redis parameter runs on a real redis-server (one per module, flushed before each test); the
sentinel parameter on a master, a replica and three sentinels (tests/redis_topology.py), reached
through a ``redis+sentinel://`` URL; the cluster parameter on a 6-process Redis Cluster (three
masters with a replica each) through a ``redis+cluster://`` URL. The
memory bus calls back synchronously and the Redis bus from its reader task, so tests wait for what
the bus delivers with :meth:`Recorder.until`.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest

from pushsvc.broker.base import (
    Acked,
    Broker,
    Command,
    NodeInfo,
    Placed,
    Publication,
    Published,
    Sent,
    SentCount,
    SessionInfo,
)
from pushsvc.broker.memory import MemoryBroker
from pushsvc.core import offsets
from pushsvc.core.trail import state
from pushsvc.settings import Settings
from pushsvc.types import Envelope, Message
from tests.redis_topology import ClusterSetup, SentinelSetup, start_cluster, start_sentinel
from tests.support import UNIT, RedisServer, start_redis

OpenBroker = Callable[..., Awaitable[Broker]]
_ids = itertools.count()


@dataclass
class Recorder:
    """A bus subscriber that keeps what it is given."""

    envelopes: list[Envelope] = field(default_factory=list)
    commands: list[Command] = field(default_factory=list)
    resyncs: int = 0

    def envelope(self, envelope: Envelope) -> None:
        self.envelopes.append(envelope)

    def command(self, command: Command) -> None:
        self.commands.append(command)

    def resync(self) -> None:
        self.resyncs += 1

    async def until(self, check: Callable[[], object], timeout: float = 5 * UNIT) -> None:
        async with asyncio.timeout(timeout):
            while not check():
                await asyncio.sleep(0.005)


def message(*, ack: bool = True, ttl_ms: int = 60_000, data: Any = None) -> Message:
    now = int(time.time() * 1000)
    raw = msgspec.json.encode({"n": next(_ids)} if data is None else data)
    return Message(f"m{next(_ids)}-{secrets.token_hex(4)}", "queue.called", msgspec.Raw(raw), now,
                   ack, now + ttl_ms)  # fmt: skip


async def publish(
    broker: Broker, items: list[tuple[Message, list[str]]], origin: str
) -> list[dict[str, str]]:
    """Publish unkeyed ``items``; their offsets by stream (each must have been placed)."""
    outcomes = await broker.publish([Publication(m, streams) for m, streams in items], origin)
    placed = [o for o in outcomes if isinstance(o, Placed)]
    assert len(placed) == len(outcomes), outcomes
    return [p.offsets for p in placed]


def node(node_id: str, **changes: Any) -> NodeInfo:
    return NodeInfo(id=node_id, client_addr="127.0.0.1:1", internal_addr="127.0.0.1:2", pid=1,
                    version="t", started=1.0, heartbeat=time.time(), **changes)  # fmt: skip


def session(session_id: str, node_id: str, user: str, device: str = "") -> SessionInfo:
    return SessionInfo(id=session_id, node=node_id, user=user, device=device or session_id,
                       remote="127.0.0.1:9", connected_at=time.time(), topics=["t"])  # fmt: skip


def positions(offs: list[str]) -> list[tuple[int, int]]:
    return [offsets.parse(o) for o in offs]


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with start_redis() as server:
        yield server


@pytest.fixture(scope="module")
def sentinel_setup() -> Iterator[SentinelSetup]:
    with start_sentinel(replicas=1) as setup:
        yield setup


@pytest.fixture(scope="module")
def cluster_setup() -> Iterator[ClusterSetup]:
    with start_cluster() as setup:
        yield setup


@pytest.fixture(
    params=[
        "memory",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("sentinel", marks=pytest.mark.redis),
        pytest.param("cluster", marks=pytest.mark.redis),
    ]
)
async def open_broker(request: pytest.FixtureRequest) -> AsyncIterator[OpenBroker]:
    """Opens started brokers of the parametrized kind; closes them after the test."""
    kind: str = request.param
    url = ""
    if kind == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        server.command("FLUSHALL")
        url = server.url
    elif kind == "sentinel":
        setup: SentinelSetup = request.getfixturevalue("sentinel_setup")
        setup.master().command("FLUSHALL")
        url = setup.url()
    elif kind == "cluster":
        cluster: ClusterSetup = request.getfixturevalue("cluster_setup")
        cluster.flush()
        url = cluster.url()
    opened: list[Broker] = []

    async def open_(*, subscriber: Recorder | None = None, follow: tuple[str, ...] = (),
                    history_size: int = 1000,
                    history_ttl: int = 86_400, ledger_retention: float = 3600,
                    idempotency_ttl: int = 86_400) -> Broker:  # fmt: skip
        broker: Broker
        if kind == "memory":
            broker = MemoryBroker(history_size=history_size, history_ttl=history_ttl,
                                  ledger_retention=ledger_retention,
                                  idempotency_ttl=idempotency_ttl)  # fmt: skip
        else:
            from pushsvc.brokers import redis_broker

            settings = Settings(redis_url=url, history_size=history_size, history_ttl=history_ttl,
                                idempotency_ttl=idempotency_ttl, node_id="contract")  # fmt: skip
            broker = redis_broker(settings, ledger_retention=ledger_retention)
        if subscriber is not None:
            broker.bus.subscribe(subscriber.envelope, subscriber.command, subscriber.resync)
        await broker.start()
        opened.append(broker)
        await broker.bus.follow(follow)
        return broker

    yield open_
    for broker in opened:
        await broker.close()


@pytest.fixture
async def broker(open_broker: OpenBroker) -> Broker:
    return await open_broker()


# -- publish, bus, history ------------------------------------------------------------------------


async def test_publish_returns_ordered_offsets_and_the_bus_carries_them(
    open_broker: OpenBroker,
) -> None:
    rec = Recorder()
    broker = await open_broker(subscriber=rec, follow=("user:p1", "topic:c205", "all"))
    m1, m2, m3 = message(), message(ack=False), message()
    items = [(m1, ["user:p1", "topic:c205"]), (m2, ["user:p1"]), (m3, ["topic:c205", "all"])]
    placed = await publish(broker, items, origin="node-a")
    assert [list(p) for p in placed] == [
        ["user:p1", "topic:c205"],
        ["user:p1"],
        ["topic:c205", "all"],
    ]
    assert offsets.parse(placed[0]["user:p1"]) < offsets.parse(placed[1]["user:p1"])
    assert offsets.parse(placed[0]["topic:c205"]) < offsets.parse(placed[2]["topic:c205"])
    # one envelope per (message, stream), in publish order per stream (streams of different
    # partitions come on different subscriptions on Redis Cluster), each naming the entry
    # before it
    await rec.until(lambda: len(rec.envelopes) >= 5)
    for name in ("user:p1", "topic:c205", "all"):
        assert [(e.message, e.offsets, e.origin) for e in rec.envelopes if name in e.offsets] == [
            (m, {name: p[name]}, "node-a")
            for (m, _), p in zip(items, placed, strict=True)
            if name in p
        ]
    assert len(rec.envelopes) == 5
    assert bytes(rec.envelopes[0].message.data) in (bytes(m1.data), bytes(m3.data))
    before: dict[str, str] = {}
    for e in rec.envelopes:
        [(stream, offset)] = e.offsets.items()
        assert e.after == before.get(stream, "0-0")
        before[stream] = offset


async def test_the_bus_carries_only_the_followed_streams(open_broker: OpenBroker) -> None:
    rec = Recorder()
    broker = await open_broker(subscriber=rec, follow=("user:a",))
    a, b, both = message(), message(), message()
    await publish(broker, [(a, ["user:a"]), (b, ["user:b"]), (both, ["user:b", "user:a"])], "n")
    await rec.until(lambda: len(rec.envelopes) >= 2)
    await asyncio.sleep(0.05 * UNIT)
    assert [(e.message.id, list(e.offsets)) for e in rec.envelopes] == [
        (a.id, ["user:a"]),
        (both.id, ["user:a"]),
    ]
    broker.bus.unfollow(["user:a"])
    await broker.bus.follow(["user:b", "user:b"])
    await broker.bus.follow([])  # nothing to wait for
    rec.envelopes.clear()
    later_a, later_b = message(), message()
    await publish(broker, [(later_a, ["user:a"]), (later_b, ["user:b"])], "n")
    await rec.until(lambda: len(rec.envelopes) >= 1)
    await asyncio.sleep(0.05 * UNIT)
    assert [(e.message.id, list(e.offsets)) for e in rec.envelopes] == [(later_b.id, ["user:b"])]
    # a follow given up while it waits returns at once, subscribed or not
    given_up = asyncio.ensure_future(broker.bus.follow(["user:gone"]))
    await asyncio.sleep(0)
    broker.bus.unfollow(["user:gone"])
    await asyncio.wait_for(given_up, 1 * UNIT)
    # following again what was just left is live at once (no confirmation is lost in between)
    broker.bus.unfollow(["user:b"])
    await broker.bus.follow(["user:b"])
    again = message()
    await publish(broker, [(again, ["user:b"])], "n")
    await rec.until(lambda: again.id in {e.message.id for e in rec.envelopes})


async def test_publish_starts_each_trail(broker: Broker) -> None:
    m1, m2 = message(), message(ack=False)
    placed = await publish(broker, [(m1, ["user:p1", "all"]), (m2, [])], origin="node-a")
    for m, streams in zip((m1, m2), placed, strict=True):
        trail = await broker.ledger.trail(m.id)
        assert trail is not None
        assert (trail.id, trail.event, trail.ack, trail.streams) == (m.id, m.event, m.ack, streams)
        assert (trail.published_at, trail.expires_at) == (m.ts / 1000, m.expires / 1000)
        assert state(trail, time.time()) == "pending"
    # the node records the same Published later: the first record stays
    await broker.ledger.record(
        [published(m1, {"user:p1": "1-0"}), Sent(m1.id, "d", "s", "a", 1.0, 1)]
    )
    trail = await broker.ledger.trail(m1.id)
    assert trail is not None and trail.streams == placed[0] and set(trail.deliveries) == {"s"}


async def test_offsets_keep_growing_across_publishes(open_broker: OpenBroker) -> None:
    rec = Recorder()
    broker = await open_broker(subscriber=rec, follow=("user:p2",))
    placed = []
    for _ in range(5):
        placed += await publish(broker, [(message(), ["user:p2"])], origin="n")
    offs = [p["user:p2"] for p in placed]
    assert positions(offs) == sorted(set(positions(offs)))
    await rec.until(lambda: len(rec.envelopes) >= 5)
    assert [e.offsets["user:p2"] for e in rec.envelopes] == offs


async def test_empty_publish(broker: Broker) -> None:
    assert await publish(broker, [], origin="n") == []


async def test_history_reads_exactly_what_follows_an_offset(broker: Broker) -> None:
    sent = [message() for _ in range(10)]
    placed = await publish(broker, [(m, ["user:h"]) for m in sent], origin="n")
    offs = [p["user:h"] for p in placed]
    everything = await broker.history.read("user:h", None, 100)
    assert [e.offset for e in everything] == offs
    assert [e.message for e in everything] == sent
    after = await broker.history.read("user:h", offs[3], 4)
    assert [e.offset for e in after] == offs[4:8]
    assert [e.message.id for e in after] == [m.id for m in sent[4:8]]
    assert [e.offset for e in await broker.history.read("user:h", None, 3)] == offs[:3]
    assert await broker.history.read("user:h", offs[-1], 10) == []
    assert [e.offset for e in await broker.history.read("user:h", "0-0", 2)] == offs[:2]
    assert await broker.history.last_offset("user:h") == offs[-1]
    assert await broker.history.read("user:nobody", None, 10) == []
    assert await broker.history.last_offset("user:nobody") is None


async def test_history_reads_many_streams_at_once_as_each_alone(broker: Broker) -> None:
    sent = [message() for _ in range(6)]
    placed = await publish(
        broker,
        [(m, ["user:m1"] if i % 2 else ["user:m2", "topic:m3"]) for i, m in enumerate(sent)],
        origin="n",
    )
    m2 = [p["user:m2"] for p in placed if "user:m2" in p]
    max_offset = f"{(1 << 64) - 1}-{(1 << 64) - 1}"  # nothing can follow it
    reads = [("user:m1", None), ("user:m2", m2[0]), ("user:nobody", None), ("topic:m3", None),
             ("user:m1", max_offset), ("user:m2", None)] * 400  # fmt: skip
    together = await broker.history.read_many(reads, 2)
    alone = [await broker.history.read(stream, after, 2) for stream, after in reads[:6]]
    assert together == alone * 400
    assert [[e.message.id for e in got] for got in together[:6]] == [
        [sent[1].id, sent[3].id], [sent[2].id, sent[4].id], [], [sent[0].id, sent[2].id], [],
        [sent[0].id, sent[2].id],
    ]  # fmt: skip
    assert await broker.history.read_many([], 10) == []


async def test_history_keeps_the_newest_history_size_entries(open_broker: OpenBroker) -> None:
    broker = await open_broker(history_size=5)
    placed = await publish(broker, [(message(), ["topic:small"]) for _ in range(12)], origin="n")
    placed += await publish(broker, [(message(), ["topic:small"])], origin="n")
    kept = await broker.history.read("topic:small", None, 100)
    assert [e.offset for e in kept] == [p["topic:small"] for p in placed[-5:]]


# -- ledger ---------------------------------------------------------------------------------------


def published(m: Message, streams: dict[str, str] | None = None) -> Published:
    return Published(
        m.id, m.event, m.ts / 1000, m.expires / 1000, m.ack, streams or {"user:p": "1-0"}
    )


async def test_trail_follows_published_sent_acked(broker: Broker) -> None:
    m = message()
    ledger = broker.ledger
    assert await ledger.trail(m.id) is None
    await ledger.record([published(m, {"user:p": "5-0"})])
    trail = await ledger.trail(m.id)
    assert trail is not None
    assert (trail.id, trail.event, trail.ack, trail.streams) == (
        m.id,
        m.event,
        True,
        {"user:p": "5-0"},
    )
    assert (trail.published_at, trail.expires_at) == (m.ts / 1000, m.expires / 1000)
    now = time.time()
    assert (trail.deliveries, state(trail, now)) == ({}, "pending")
    await ledger.record([
        Sent(m.id, "phone", "s1", "node-a", 100.5, 1),
        Sent(m.id, "laptop", "s2", "node-b", 100.75, 1),
    ])  # fmt: skip
    trail = await ledger.trail(m.id)
    assert trail is not None and state(trail, now) == "delivered"
    await ledger.record([Sent(m.id, "phone", "s1", "node-a", 110.5, 2)])  # a redelivery
    await ledger.record([Acked(m.id, "phone", "s1", "node-a", 111.25)])
    trail = await ledger.trail(m.id)
    assert trail is not None and state(trail, now) == "partially_acked"
    s1, s2 = trail.deliveries["s1"], trail.deliveries["s2"]
    assert (s1.device, s1.node, s1.sent_at, s1.acked_at, s1.attempts) == (
        "phone",
        "node-a",
        100.5,
        111.25,
        2,
    )
    assert (s2.device, s2.node, s2.sent_at, s2.acked_at, s2.attempts) == (
        "laptop",
        "node-b",
        100.75,
        None,
        1,
    )
    await ledger.record([Acked(m.id, "laptop", "s2", "node-b", 112.0)])
    trail = await ledger.trail(m.id)
    assert trail is not None and state(trail, now) == "acked"
    assert trail.sent_by_node == {}


async def test_trail_per_session_of_one_device_and_idempotent_records(broker: Broker) -> None:
    m = message()
    sent = Sent(m.id, "phone", "s1", "node-a", 10.0, 1)
    await broker.ledger.record([published(m), sent, sent])
    # the phone reconnected: a new session on another node, then acked there
    await broker.ledger.record([Sent(m.id, "phone", "s9", "node-b", 20.0, 1),
                                Acked(m.id, "phone", "s9", "node-b", 21.0),
                                Acked(m.id, "phone", "s9", "node-b", 25.0)])  # fmt: skip
    trail = await broker.ledger.trail(m.id)
    assert trail is not None
    assert set(trail.deliveries) == {"s1", "s9"}
    s1, s9 = trail.deliveries["s1"], trail.deliveries["s9"]
    assert (s1.sent_at, s1.acked_at, s1.attempts) == (10.0, None, 1)
    assert (s9.node, s9.sent_at, s9.acked_at, s9.attempts) == ("node-b", 20.0, 21.0, 1)
    assert state(trail, time.time()) == "acked"
    # and then an ack from the first session too, late: both sessions show their own ack
    await broker.ledger.record([Acked(m.id, "phone", "s1", "node-a", 30.0),
                                Sent(m.id, "phone", "s1", "node-a", 12.0, 2)])  # fmt: skip
    trail = await broker.ledger.trail(m.id)
    assert trail is not None
    s1, s9 = trail.deliveries["s1"], trail.deliveries["s9"]
    assert (s1.node, s1.sent_at, s1.acked_at, s1.attempts) == ("node-a", 10.0, 30.0, 2)
    assert (s9.sent_at, s9.acked_at) == (20.0, 21.0)
    assert list(trail.deliveries) == ["s1", "s9"]  # in order of their first write


async def test_records_may_arrive_before_their_published(broker: Broker) -> None:
    m, quiet = message(), message(ack=False)
    ledger = broker.ledger
    await ledger.record([Sent(m.id, "phone", "s1", "node-b", 10.0, 1)])
    await ledger.record([Acked(m.id, "tablet", "s2", "node-b", 11.0),
                         SentCount(quiet.id, "node-b", 4)])  # fmt: skip
    assert await ledger.trail(m.id) is None  # nothing to show before the Published record
    await ledger.record([published(m), published(quiet)])
    trail = await ledger.trail(m.id)
    assert trail is not None
    phone, tablet = trail.deliveries["s1"], trail.deliveries["s2"]
    assert (phone.device, phone.node, phone.sent_at, phone.acked_at, phone.attempts) == (
        "phone",
        "node-b",
        10.0,
        None,
        1,
    )
    assert (tablet.device, tablet.node, tablet.sent_at, tablet.acked_at, tablet.attempts) == (
        "tablet",
        "node-b",
        None,
        11.0,
        1,
    )
    assert state(trail, time.time()) == "partially_acked"
    quiet_trail = await ledger.trail(quiet.id)
    assert quiet_trail is not None and quiet_trail.sent_by_node == {"node-b": 4}
    assert await ledger.acked_ids("tablet", [m.id]) == {m.id}


async def test_sent_counts_add_up_per_node(broker: Broker) -> None:
    m = message(ack=False)
    await broker.ledger.record([published(m), SentCount(m.id, "node-a", 3),
                                SentCount(m.id, "node-b", 1)])  # fmt: skip
    await broker.ledger.record([SentCount(m.id, "node-a", 2)])
    trail = await broker.ledger.trail(m.id)
    assert trail is not None
    assert trail.sent_by_node == {"node-a": 5, "node-b": 1}
    assert trail.deliveries == {} and state(trail, time.time()) == "delivered"


async def test_acked_ids_are_per_device(broker: Broker) -> None:
    m1, m2, m3 = message(), message(), message()
    await broker.ledger.record([published(m1), published(m2), published(m3),
                                Acked(m1.id, "phone", "s1", "a", 1.0),
                                Acked(m2.id, "laptop", "s2", "a", 1.0),
                                Sent(m3.id, "phone", "s1", "a", 1.0, 1)])  # fmt: skip
    assert await broker.ledger.acked_ids("phone", [m1.id, m2.id, m3.id, "unknown"]) == {m1.id}
    assert await broker.ledger.acked_ids("laptop", [m1.id, m2.id]) == {m2.id}
    assert await broker.ledger.acked_ids("watch", [m1.id]) == set()
    assert await broker.ledger.acked_ids("phone", []) == set()


async def test_trails_expire_after_message_expiry_plus_retention(open_broker: OpenBroker) -> None:
    broker = await open_broker(ledger_retention=0.2 * UNIT)
    m = message(ttl_ms=0)
    await broker.ledger.record([published(m), Acked(m.id, "phone", "s1", "a", 1.0)])
    assert await broker.ledger.trail(m.id) is not None
    await asyncio.sleep(0.5 * UNIT)
    await broker.ledger.record([])  # the memory ledger sweeps as it is written
    assert await broker.ledger.trail(m.id) is None
    assert await broker.ledger.acked_ids("phone", [m.id]) == set()


# -- registry -------------------------------------------------------------------------------------


async def test_nodes_live_while_their_heartbeat_does(broker: Broker) -> None:
    registry = broker.registry
    await registry.register(node("node-a"), ttl=0.3 * UNIT)
    await registry.register(node("node-b"), ttl=30)
    assert sorted(n.id for n in await registry.nodes()) == ["node-a", "node-b"]
    await registry.register(node("node-b", connections=7, state="draining"), ttl=30)
    b = next(n for n in await registry.nodes() if n.id == "node-b")
    assert (b.connections, b.state) == (7, "draining")
    await asyncio.sleep(0.6 * UNIT)
    assert [n.id for n in await registry.nodes()] == ["node-b"]
    await registry.register(node("node-a"), ttl=30)  # it came back
    assert sorted(n.id for n in await registry.nodes()) == ["node-a", "node-b"]
    await registry.deregister("node-b")
    assert [n.id for n in await registry.nodes()] == ["node-a"]


async def test_revocations_are_per_user_replace_each_other_and_expire(broker: Broker) -> None:
    registry = broker.registry
    assert await registry.revoked("p1") is None
    await registry.revoke("p1", 1_700_000_000, ttl=0.4 * UNIT)
    await registry.revoke("p2", 1_700_000_005, ttl=30)
    assert await registry.revoked("p1") == 1_700_000_000
    await registry.revoke("p1", 1_700_000_009, ttl=0.4 * UNIT)  # a later revocation replaces
    assert (await registry.revoked("p1"), await registry.revoked("p3")) == (1_700_000_009, None)
    await asyncio.sleep(0.7 * UNIT)
    assert (await registry.revoked("p1"), await registry.revoked("p2")) == (None, 1_700_000_005)


async def test_sessions_filter_by_user_and_node(broker: Broker) -> None:
    registry = broker.registry
    await registry.register(node("node-a"), ttl=30)
    await registry.register(node("node-b"), ttl=30)
    s1, s2, s3 = (
        session("s1", "node-a", "u1"),
        session("s2", "node-b", "u1"),
        session("s3", "node-a", "u2"),
    )
    await registry.add_sessions([s1, s2, s3])

    async def ids(**query: Any) -> set[str]:
        return {s.id for s in await registry.sessions(**query)}

    assert await ids() == {"s1", "s2", "s3"}
    assert await ids(user="u1") == {"s1", "s2"}
    assert await ids(node="node-a") == {"s1", "s3"}
    assert await ids(user="u1", node="node-b") == {"s2"}
    assert await ids(user="nobody") == set()
    assert await ids(node="node-z") == set()
    assert len(await registry.sessions(limit=2)) == 2
    assert len(await registry.sessions(user="u1", limit=1)) == 1
    assert await registry.find_session("s3") == s3
    assert await registry.find_session("s404") is None
    await registry.remove_sessions("node-a", ["s1", "s404"])
    assert await registry.find_session("s1") is None
    assert await ids(user="u1") == {"s2"}
    assert await ids() == {"s2", "s3"}


async def test_sessions_vanish_with_their_node(broker: Broker) -> None:
    registry = broker.registry
    await registry.register(node("node-a"), ttl=0.3 * UNIT)
    await registry.register(node("node-b"), ttl=30)
    await registry.add_sessions([session("s1", "node-a", "u1"), session("s2", "node-b", "u1")])
    assert (await registry.find_session("s1")) is not None
    await asyncio.sleep(0.6 * UNIT)  # node-a stopped heartbeating
    assert [s.id for s in await registry.sessions(user="u1")] == ["s2"]
    assert [s.id for s in await registry.sessions()] == ["s2"]
    assert await registry.sessions(node="node-a") == []
    assert await registry.find_session("s1") is None
    await registry.deregister("node-b")  # a clean goodbye takes its sessions along
    assert await registry.sessions() == []
    assert await registry.find_session("s2") is None


# -- idempotency ----------------------------------------------------------------------------------


async def test_a_bound_key_appends_nothing_again(open_broker: OpenBroker) -> None:
    rec = Recorder()
    broker = await open_broker(subscriber=rec, follow=("user:i",))
    first, second, third = message(), message(), message()
    (placed,) = await broker.publish([Publication(first, ["user:i"], "c:k1", "fa")], "n")
    assert isinstance(placed, Placed) and not placed.duplicate
    assert (placed.id, placed.fingerprint) == (first.id, "fa")
    again = await broker.publish(
        [Publication(second, ["user:i"], "c:k1", "fa"), Publication(third, ["user:i"], "c:k1", "fb"),
         Publication(second, ["user:i"], "c:k2", "fa"), Publication(third, ["user:i"], "c:k2", "fa")],
        "n",
    )  # fmt: skip
    got = [p for p in again if isinstance(p, Placed)]
    assert len(got) == 4
    assert [(p.id, p.offsets, p.fingerprint, p.duplicate) for p in got] == [
        (first.id, placed.offsets, "fa", True),
        (first.id, placed.offsets, "fa", True),  # whatever the fingerprint: the caller compares
        (second.id, got[2].offsets, "fa", False),
        (second.id, got[2].offsets, "fa", True),  # bound by the item before it, same call
    ]
    kept = await broker.history.read("user:i", None, 10)
    assert [e.message.id for e in kept] == [first.id, second.id]
    await rec.until(lambda: len(rec.envelopes) >= 2)
    await asyncio.sleep(0.05 * UNIT)
    assert [e.message.id for e in rec.envelopes] == [first.id, second.id]
    assert await broker.ledger.trail(third.id) is None
    # another scope, the same key: another message
    (other,) = await broker.publish([Publication(third, ["user:i"], "d:k1", "fa")], "n")
    assert isinstance(other, Placed) and (other.id, other.duplicate) == (third.id, False)


async def test_bound_keys_expire(open_broker: OpenBroker) -> None:
    broker = await open_broker(idempotency_ttl=1)
    m1, m2 = message(), message()
    (first,) = await broker.publish([Publication(m1, ["user:e"], "c:k", "f")], "n")
    await asyncio.sleep(1.2)  # the key's ttl, 1 s: the shortest the setting allows
    (later,) = await broker.publish([Publication(m2, ["user:e"], "c:k", "f")], "n")
    assert isinstance(first, Placed) and isinstance(later, Placed)
    assert (later.id, later.duplicate) == (m2.id, False)


async def test_a_message_for_many_streams_reads_back_from_each(broker: Broker) -> None:
    m = message(data={"blob": "x" * 2000})
    users = [f"user:b{i}" for i in range(50)]
    (placed,) = await publish(broker, [(m, users)], origin="n")
    reads = await broker.history.read_many([(u, None) for u in users], 10)
    assert [[(e.offset, e.message) for e in got] for got in reads] == [
        [(placed[u], m)] for u in users
    ]


# -- commands and lifecycle -----------------------------------------------------------------------


async def test_commands_reach_the_subscriber(open_broker: OpenBroker) -> None:
    rec = Recorder()
    broker = await open_broker(subscriber=rec)
    close = Command(kind="close_session", node="node-b", session="s1", code=4010, reason="ops")
    drain = Command(kind="drain", node="*")
    revoke = Command(kind="revoke_user", node="*", code=4001, user="p1", not_before=1_700_000_001)
    for command in (close, drain, revoke):
        await broker.bus.send_command(command)
    await rec.until(lambda: len(rec.commands) >= 3)
    assert rec.commands == [close, drain, revoke]
    assert rec.resyncs == 0


async def test_start_and_close_are_idempotent(open_broker: OpenBroker) -> None:
    broker = await open_broker()
    await broker.start()
    assert broker.up
    await broker.close()
    await broker.close()


# -- delivery accounting (docs/monitoring.md) ------------------------------------------------------


def timed(*, ack: bool = True, age: float = 0.0, ttl_ms: int = 60_000) -> Message:
    """A message whose id starts with its publish time, like the node's (publish.new_id)."""
    now = int((time.time() - age) * 1000)
    return Message(f"{now:012x}{secrets.token_hex(10)}", "queue.called", msgspec.Raw(b"1"), now,
                   ack, now + ttl_ms)  # fmt: skip


async def test_accounting_counts_each_pair_once_in_its_publish_bucket(broker: Broker) -> None:
    from pushsvc.broker.base import Accepted, Expected, Expired, bucket_of

    ledger = broker.ledger
    m = timed(age=120)  # acks land in the publish bucket, however late they come
    (placed,) = await publish(broker, [(m, ["user:p1"])], origin="a")
    bucket = bucket_of(m.id)
    assert bucket is not None and bucket <= m.ts / 1000 < bucket + 5
    t = time.time()
    await ledger.record([
        Accepted(m.id, "a", True),
        Sent(m.id, "phone", "s1", "a", t, 1), Sent(m.id, "phone", "s1", "a", t + 1, 2),
        Acked(m.id, "phone", "s1", "a", t + 2),
    ])  # fmt: skip
    # retried flush, reconnect to node b: replayed and acked again -- counted nothing new
    await ledger.record([
        Accepted(m.id, "a", True), Sent(m.id, "phone", "s2", "b", t + 3, 1),
        Acked(m.id, "phone", "s2", "b", t + 4), Acked(m.id, "phone", "s1", "a", t + 2),
    ])  # fmt: skip
    # the tablet: owed on a (the write was dropped), then written by b after a reconnect
    await ledger.record(
        [Expected(m.id, "tablet", "s3", "a", t), Expected(m.id, "tablet", "s3", "a", t)]
    )
    await ledger.record(
        [Sent(m.id, "tablet", "s4", "b", t + 5, 1), Acked(m.id, "tablet", "s4", "b", t + 6)]
    )
    # the laptop: came back after the ttl (twice); the watch: owed, never written
    await ledger.record([Expired(m.id, "laptop", "b"), Expired(m.id, "laptop", "b")])
    await ledger.record([Expected(m.id, "watch", "s5", "b", t)])
    tally = await ledger.tallies([bucket, bucket + 5])
    assert tally[bucket + 5] == {}
    assert tally[bucket] == {
        "a": {"published": 1, "expected": 2, "sent": 1, "acked": 1, "redelivered": 1},
        "b": {"sent": 1, "acked": 1, "expired": 1, "expected": 1},
    }
    assert await ledger.bucket_messages(bucket) == [m.id]
    pairs = {p.device: p for p in await ledger.pairs([m.id, "nope"])}
    assert set(pairs) == {"phone", "tablet", "watch"}
    assert (pairs["phone"].node, pairs["phone"].sent, pairs["phone"].acked) == ("a", True, True)
    assert pairs["phone"].attempts == 2 and pairs["phone"].nodes == ("a", "b")
    assert (pairs["tablet"].node, pairs["tablet"].sent, pairs["tablet"].acked) == ("a", True, True)
    assert (pairs["watch"].node, pairs["watch"].sent, pairs["watch"].acked) == ("b", False, False)
    assert pairs["watch"].expires_at == m.expires / 1000
    # the trail shows the owed delivery without a write; its state ignores it
    trail = await ledger.trail(m.id)
    assert trail is not None and trail.deliveries["s5"].sent_at is None
    assert placed == trail.streams


async def test_accounting_ignores_ids_without_a_publish_time(broker: Broker) -> None:
    from pushsvc.broker.base import Accepted, Expected

    m = message()
    await publish(broker, [(m, ["user:p1"])], origin="a")
    await broker.ledger.record([
        Accepted(m.id, "a", True), Expected(m.id, "d", "s", "a", 1.0), Sent(m.id, "d", "s", "a", 1.0, 1),
    ])  # fmt: skip
    trail = await broker.ledger.trail(m.id)
    assert trail is not None and trail.deliveries["s"].sent_at == 1.0
    assert await broker.ledger.pairs([m.id]) == []


async def test_every_ledger_adds_the_accounting_table_up_alike(broker: Broker) -> None:
    """Each row of the table of tests/test_accounting.py, recorded as one batch and record by
    record, adds up to the tally the pure fold gives it (each run in a bucket of its own), with
    the same published ids, owing nodes and acks."""
    from pushsvc.broker.base import bucket_of
    from pushsvc.core.accounting import Tallies
    from tests.test_accounting import TABLE, bind

    start = time.time()
    runs = [(row, batched) for row in TABLE for batched in (True, False)]
    for number, (row, batched) in enumerate(runs):
        ids, events = bind(row.events, start - 5 * number)
        if batched:
            await broker.ledger.record(events)
        else:
            for event in events:
                await broker.ledger.record([event])
        fold = Tallies()
        for event in events:
            fold.apply(event)
        how = (row.name, "batched" if batched else "one by one")
        bucket = bucket_of(ids["M"])
        assert bucket is not None
        tally = (await broker.ledger.tallies([bucket]))[bucket]
        assert tally == row.tally == fold.by_bucket.get(bucket, {}), how
        published = sorted(fold.published.get(bucket, ()))
        assert await broker.ledger.bucket_messages(bucket) == published, how
        pairs = await broker.ledger.pairs(list(ids.values()))
        owners = {(m, d, n) for m in ids.values() for d, n in fold.owners(m).items()}
        assert {(p.message_id, p.device, p.node) for p in pairs} == owners, how
        assert {(p.message_id, p.device) for p in pairs if p.acked} == {
            (m, d) for m, d, _ in owners if fold.acked(d, m)
        }, how


async def test_one_lease_holder_at_a_time(broker: Broker) -> None:
    lease = broker.lease
    assert await lease.acquire("m1", 0.4 * UNIT)
    assert not await lease.acquire("m2", 10)
    assert await lease.acquire("m1", 0.4 * UNIT)  # extended
    await lease.release("m2")  # not theirs: no effect
    assert not await lease.acquire("m2", 10)
    await asyncio.sleep(0.6 * UNIT)  # expired
    assert await lease.acquire("m2", 10)
    await lease.release("m2")
    assert await lease.acquire("m1", 10)


async def test_heartbeats_list_lapsed_nodes_not_deregistered_ones(broker: Broker) -> None:
    registry = broker.registry
    await registry.register(node("gone"), ttl=0.2 * UNIT)
    await registry.register(node("left"), ttl=30)
    await registry.register(node("here"), ttl=30)
    await registry.deregister("left")
    await asyncio.sleep(0.4 * UNIT)
    beats = await registry.heartbeats()
    assert set(beats) == {"gone", "here"}
    assert beats["gone"] < time.time() < beats["here"]
    assert [n.id for n in await registry.nodes()] == ["here"]


def test_redis_trails_written_by_older_nodes_read_the_same() -> None:
    """Before the first-session details moved into ``e:`` / ``k:``, those held only the owing
    node and "1", with every session in its own fields (a rolling upgrade meets both)."""
    from pushsvc.broker.redis.ledger import _pairs_of

    m = message()
    p = msgspec.json.encode(published(m))
    old = {b"p": p, b"e:phone": b"node-a", b"d:s1": b'["phone","node-a"]', b"s:s1": b"10.0",
           b"n:s1": b"2", b"a:s1": b"11.0", b"k:phone": b"1"}  # fmt: skip
    new = {b"p": p, b"e:phone": b'["s1","node-a",10.0]', b"n:s1": b"2",
           b"k:phone": b'["s1","node-a",11.0]'}  # fmt: skip
    assert _pairs_of(m.id, old) == _pairs_of(m.id, new)
    (pair,) = _pairs_of(m.id, new)
    assert (pair.node, pair.sent, pair.acked, pair.attempts) == ("node-a", True, True, 2)


# -- rate limits ---------------------------------------------------------------------------------


async def test_rate_buckets_fill_at_their_rate_up_to_their_burst(broker: Broker) -> None:
    limits = broker.limits
    rate, burst = 2.0 / UNIT, 3.0
    assert [await limits.take("pharmacy", rate, burst) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = await limits.take("pharmacy", rate, burst)
    assert 0 < wait <= 1 / rate
    assert await limits.take("lab", rate, burst) == 0.0  # one bucket per key
    await asyncio.sleep(wait + 0.05 * UNIT)
    assert await limits.take("pharmacy", rate, burst) == 0.0  # refilled: one token
    assert await limits.take("pharmacy", rate, burst) > 0
    await asyncio.sleep(burst / rate + 0.2 * UNIT)  # full again, and never more than the burst
    assert [await limits.take("pharmacy", rate, burst) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert await limits.take("pharmacy", rate, burst) > 0


# -- push subscriptions, escalation timers, webhook queue ---------------------------------------


def subscription(endpoint: str = "https://push.example/a", seen: float | None = None) -> Any:
    from pushsvc.broker.base import Subscription

    return Subscription(endpoint=endpoint, p256dh="BP" + "a" * 85, auth="c" * 22,
                        seen=time.time() if seen is None else seen)  # fmt: skip


def escalation(message_id: str, user: str = "p1", after: float = 5.0) -> Any:
    from pushsvc.broker.base import Escalation, PushSpec

    now = time.time()
    return Escalation(message_id=message_id, user=user, event="queue.called", published_at=now,
                      expires_at=now + 60, after=after, push=PushSpec(after=5, title="Room 205"),
                      data=msgspec.Raw(b'{"room":205}'))  # fmt: skip


async def test_subscriptions_are_kept_per_user_and_device(broker: Broker) -> None:
    subs = broker.escalations
    await subs.subscribe("p1", "phone", subscription("https://push.example/1"))
    await subs.subscribe("p1", "tablet", subscription("https://push.example/2"))
    await subs.subscribe("p2", "phone", subscription("https://push.example/3"))
    await subs.subscribe("p1", "phone", subscription("https://push.example/4"))  # replaces
    held = await subs.subscriptions("p1")
    assert {d: s.endpoint for d, s in held.items()} == {
        "phone": "https://push.example/4", "tablet": "https://push.example/2"}  # fmt: skip
    await subs.unsubscribe("p1", "phone", "https://push.example/1")  # not its endpoint any more
    assert set(await subs.subscriptions("p1")) == {"phone", "tablet"}
    await subs.unsubscribe("p1", "phone", "https://push.example/4")
    await subs.unsubscribe("p1", "tablet")
    assert await subs.subscriptions("p1") == {}
    assert set(await subs.subscriptions("p2")) == {"phone"}


async def test_a_subscription_outlives_its_devices_last_session_by_the_retention(
    broker: Broker,
) -> None:
    subs = broker.escalations
    old = time.time() - 40 * 86_400  # the default retention is 30 days
    await subs.subscribe("p1", "phone", subscription(seen=old))
    await subs.subscribe("p1", "tablet", subscription(seen=old))
    await subs.seen("p1", "tablet", time.time())
    assert set(await subs.subscriptions("p1")) == {"tablet"}
    assert set(await subs.subscriptions("p1")) == {"tablet"}  # the stale one is gone for good


async def test_a_due_escalation_is_claimed_once_until_its_lease_ends(broker: Broker) -> None:
    esc = broker.escalations
    now = time.time()
    soon, later = escalation("m-soon"), escalation("m-later")
    await esc.schedule([(soon, now - 1), (later, now + 500)])
    await esc.schedule([(soon, now - 1)])  # scheduled twice: still one timer
    assert await esc.pending() == 2
    (claimed,) = await esc.claim(now, 10, lease=30)
    assert claimed.escalation == soon and claimed.step == "after" and claimed.acked is None
    assert await esc.claim(now + 1, 10, lease=30) == []  # hidden by the lease
    (again,) = await esc.claim(now + 31, 10, lease=30)  # the claimer died: due again
    assert again.escalation.name == soon.name
    await esc.pushed(soon.name, "m-soon", "p1/phone", now)
    await esc.reschedule(soon.name, now + 100, "final", attempts=2)
    assert await esc.claim(now + 99, 10, lease=30) == []
    (final,) = await esc.claim(now + 100, 10, lease=30)
    assert (final.step, final.attempts, final.pushed) == ("final", 2, {"p1/phone": now})
    await esc.finish(soon.name)
    assert await esc.pending() == 1
    assert await esc.claim(now + 1000, 10, lease=30) == [claimed_of(later)]


def claimed_of(e: Any) -> Any:
    from pushsvc.broker.base import Claimed

    return Claimed(escalation=e, step="after")


async def test_the_first_ack_of_a_user_settles_the_escalation_at_once(broker: Broker) -> None:
    esc = broker.escalations
    now = time.time()
    e = escalation("m-acked")
    await esc.schedule([(e, now + 60)])
    await esc.settle([("m-acked", "p1", "p1/phone", now), ("m-acked", "p1", "p1/tab", now + 1)])
    await esc.settle([("m-acked", "p1", "p1/tab", now + 2), ("m-none", "p1", "p1/x", now)])
    (claimed,) = await esc.claim(time.time() + 0.01, 10, lease=30)
    assert claimed.acked == ("p1/phone", now)
    assert await esc.pending() == 1  # m-none had no timer: none was made


async def test_a_push_is_recorded_in_the_trail(broker: Broker) -> None:
    m = message()
    (_placed,) = await publish(broker, [(m, ["user:p1"])], "n1")
    await broker.escalations.pushed(f"{m.id}/p1", m.id, "p1/phone", 123.5)
    found = await broker.ledger.trail(m.id)
    assert found is not None and found.pushed == {"p1/phone": 123.5}


async def test_webhook_events_are_owed_once_per_id_and_retried_until_delivered(
    broker: Broker,
) -> None:
    from pushsvc.broker.base import WebhookFailure

    q = broker.webhooks
    now = time.time()
    urls = ["http://127.0.0.1:1/a", "http://127.0.0.1:1/b"]
    assert await q.enqueue("evt_1", b'{"id":"evt_1"}', urls, now, keep=90_000)
    assert not await q.enqueue("evt_1", b'{"id":"other"}', urls, now, keep=90_000)
    assert await q.depth() == 2
    claimed = await q.claim(now + 0.01, 10, lease=30)
    assert sorted(d.url for d in claimed) == urls
    assert {d.body for d in claimed} == {b'{"id":"evt_1"}'}
    assert await q.claim(now + 1, 10, lease=30) == []
    a, b = sorted(claimed, key=lambda d: d.url)
    await q.delivered(a)
    failure = WebhookFailure(at=now, event_id="evt_1", error="HTTP 500", attempts=1)
    await q.failed(b, failure, retry_at=now + 5)
    assert await q.depth() == 1
    assert await q.failures() == {urls[1]: failure}
    (retried,) = await q.claim(now + 5, 10, lease=30)
    assert (retried.event_id, retried.url, retried.attempts) == ("evt_1", urls[1], 1)
    await q.failed(retried, failure, retry_at=None)  # given up
    assert await q.depth() == 0
