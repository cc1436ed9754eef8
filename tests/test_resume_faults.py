"""Resume and catch-up when positions and clocks disagree: real nodes, real sockets, memory broker
and a real redis-server."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from tests.support import NodeHandle, RedisServer, start_node, wait_until
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
