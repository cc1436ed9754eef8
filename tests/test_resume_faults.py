"""Resume and catch-up when positions and clocks disagree: real nodes, real sockets, memory broker
and a real redis-server."""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pushsvc.broker.keys import Keyspace
from tests.support import UNIT, NodeHandle, RedisServer, launch_node, start_node, wait_until
from tests.wire import Wire

U64 = (1 << 64) - 1
BEYOND = [
    "99999999999999-0",  # a plausible offset from the future
    f"{U64}-{U64}",  # the largest Redis stream id
    "9" * 30 + "-" + "9" * 10,  # larger than any stream id
]


@pytest.fixture(params=["memory", "redis"])
def node(request: pytest.FixtureRequest) -> Iterator[NodeHandle]:
    if request.param == "memory":
        with start_node() as handle:
            yield handle
        return
    server: RedisServer = request.getfixturevalue("server")
    with start_node(redis_url=server.url) as handle:
        yield handle


def uid(prefix: str = "p") -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


@pytest.mark.parametrize("offset", BEYOND)
async def test_a_resume_beyond_the_end_is_clamped_and_live_delivery_goes_on(
    node: NodeHandle, offset: str
) -> None:
    user, topic, empty = uid(), uid("board"), uid("quiet")
    before = node.publish({"to": {"users": [user]}, "event": "e", "data": 0})
    node.publish({"to": {"topics": [topic]}, "event": "e", "data": 0})
    token = node.token(user, [topic, empty])
    resume = {f"user:{user}": offset, f"topic:{topic}": offset, f"topic:{empty}": offset}
    client = await Wire.open(node.client_url, token, device="d", resume=resume)
    # the unacked inbox message is still owed; nothing of the topic is replayed
    assert client.welcome["replayed"] == 1
    assert (await client.recv_msg())["id"] == before["id"]
    await client.ack(before["id"])
    for n in range(3):
        for to in ({"users": [user]}, {"topics": [topic]}, {"topics": [empty]}):
            sent = node.publish({"to": to, "event": "e", "data": n})
            got = await client.recv_msg()
            assert (got["id"], got["replay"]) == (sent["id"], False)
            if got["ack"]:
                await client.ack(got["id"])
    await client.silent()
    await client.close()
    wait_until(lambda: node.trail(sent["id"])["state"] == "delivered")


# -- clocks -------------------------------------------------------------------------------------

LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"


def clock(offset: str) -> dict[str, str]:
    """The environment of a process whose wall clock is ``offset`` seconds off (``"+30"``)."""
    assert Path(LIBFAKETIME).exists(), "libfaketime is not installed (apt-get install faketime)"
    return {"LD_PRELOAD": LIBFAKETIME, "FAKETIME": offset, "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


@contextlib.contextmanager
def skewed_pair(server: RedisServer, publisher: str, receiver: str) -> Iterator[list[NodeHandle]]:
    nodes = [
        launch_node(redis_url=server.url, env=clock(publisher), enable_fault_injection=True),
        launch_node(redis_url=server.url, env=clock(receiver), enable_fault_injection=True),
    ]
    try:
        yield nodes
    finally:
        for n in nodes:
            n.stop()


SKEWS = [("+30", "+0"), ("+0", "-45"), ("-59", "+59")]


@pytest.mark.parametrize(("publisher_clock", "receiver_clock"), SKEWS)
async def test_a_stopped_bus_is_caught_up_from_stream_ids_whatever_the_clocks(
    server: RedisServer, publisher_clock: str, receiver_clock: str
) -> None:
    with skewed_pair(server, publisher_clock, receiver_clock) as (publisher, receiver):
        user, topic = uid(), uid("board")
        client = await Wire.open(receiver.client_url, receiver.token(user, [topic]), device="d")
        first = publisher.publish({"to": {"users": [user]}, "event": "e", "data": 0})
        assert (await client.recv_msg())["id"] == first["id"]
        await client.ack(first["id"])
        # the receiver's subscription is wedged: everything published now is lost on the bus
        assert receiver.api("POST", "/v1/admin/faults", json={"stop_bus": True}).status_code == 200
        lost = [
            publisher.publish({"to": to, "event": "e", "data": n, "ttl": 20})
            for n in range(3)
            for to in ({"users": [user]}, {"topics": [topic]})
        ]
        await client.silent(0.5 * UNIT)
        assert receiver.api("DELETE", "/v1/admin/faults").status_code == 200
        got = await client.messages(len(lost), timeout=10 * UNIT)
        assert sorted(m["id"] for m in got) == sorted(m["id"] for m in lost)
        await client.ack(*(m["id"] for m in got if m["ack"]))
        live = publisher.publish({"to": {"users": [user]}, "event": "e", "data": "live"})
        assert (await client.recv_msg())["id"] == live["id"]
        await client.silent()
        await client.close()


@pytest.mark.parametrize(("publisher_clock", "receiver_clock"), SKEWS)
async def test_killed_subscriptions_lose_nothing_whatever_the_clocks(
    server: RedisServer, publisher_clock: str, receiver_clock: str
) -> None:
    with skewed_pair(server, publisher_clock, receiver_clock) as (publisher, receiver):
        user = uid()
        client = await Wire.open(receiver.client_url, receiver.token(user), device="d")
        published: list[str] = []
        for n in range(30):
            if n in (5, 15):
                server.command("CLIENT", "KILL", "TYPE", "pubsub")
            body = {"to": {"users": [user]}, "event": "e", "data": n, "ttl": 20}
            published.append(publisher.publish(body)["id"])
        got: set[str] = set()
        while not got >= set(published):
            m = await client.recv_msg(timeout=10 * UNIT)
            got.add(m["id"])
            await client.ack(m["id"])
        await client.close()


def catchups(node: NodeHandle) -> float:
    text = httpx.get(node.internal_url + "/metrics", timeout=5 * UNIT).text
    (line,) = [x for x in text.splitlines() if x.startswith("pushsvc_bus_catchups_total ")]
    return float(line.split()[1])


async def test_an_envelope_lost_on_the_bus_is_found_by_the_next_one_of_its_stream(
    server: RedisServer,
) -> None:
    """Each envelope names the offset before it in its stream: the next envelope of a stream
    whose previous one never arrived makes the node catch that stream up from history."""
    with start_node(redis_url=server.url) as node:
        user = uid()
        client = await Wire.open(node.client_url, node.token(user), device="d")
        first = node.publish({"to": {"users": [user]}, "event": "e", "data": 0})
        assert (await client.recv_msg())["id"] == first["id"]
        await client.ack(first["id"])
        # an entry appended without its envelope, as if the bus had lost it
        now = int(time.time() * 1000)
        lost = {"id": "lost-" + secrets.token_hex(4), "event": "e", "data": 1, "ts": now,
                "ack": True, "expires": now + 60_000}  # fmt: skip
        stream = Keyspace().stream(f"user:{user}")
        server.command("XADD", stream, "*", "m", json.dumps(lost))
        await client.silent(0.3 * UNIT)  # nothing says it is there yet
        before = catchups(node)
        after = node.publish({"to": {"users": [user]}, "event": "e", "data": 2})
        got = await client.messages(2, timeout=10 * UNIT)
        assert [m["id"] for m in got] == [lost["id"], after["id"]]
        assert catchups(node) == before + 1
        await client.close()
