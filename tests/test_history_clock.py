"""History reads judge a message's age in Redis's clock (its stream id), not in the reading
node's: a node whose wall clock is a minute off Redis (libfaketime) replays everything that is
still in the history, and a read through the broker keeps what Redis says is recent."""

from __future__ import annotations

import secrets

import pytest

from tests.support import RedisServer, launch_node
from tests.test_resume_faults import clock
from tests.wire import Wire

pytestmark = pytest.mark.redis

HISTORY_TTL = 30


@pytest.mark.parametrize("receiver_clock", ["+59", "-59"])
async def test_a_node_a_minute_off_redis_replays_the_whole_history(
    server: RedisServer, receiver_clock: str
) -> None:
    publisher = launch_node(redis_url=server.url, history_ttl=HISTORY_TTL)
    receiver = launch_node(redis_url=server.url, history_ttl=HISTORY_TTL, env=clock(receiver_clock))
    try:
        topic = f"board-{secrets.token_hex(4)}"
        token = receiver.token("p1", [topic])
        live = await Wire.open(receiver.client_url, token, device="d")
        body = {"to": {"topics": [topic]}, "event": "e", "ttl": 20}
        sent = [publisher.publish(body | {"data": n}) for n in range(4)]
        got = await live.messages(len(sent))
        assert [m["id"] for m in got] == [s["id"] for s in sent]
        await live.close()
        # a new connection resumes after the first: the rest comes from the history
        first = sent[0]["streams"][f"topic:{topic}"]
        again = await Wire.open(
            receiver.client_url, token, device="d", resume={f"topic:{topic}": first}
        )
        replayed = await again.messages(len(sent) - 1)
        assert [m["id"] for m in replayed] == [s["id"] for s in sent[1:]]
        assert all(m["replay"] for m in replayed)
        await again.silent()
        await again.close()
    finally:
        for node in (publisher, receiver):
            node.stop()
