"""Publish rate limits per API key against real nodes: one bucket across two nodes on a real
Redis, one per node on the memory broker, 429 rate_limited with Retry-After on both paths (the
publish lane and the routes)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.support import UNIT, NodeHandle, RedisServer, start_node

LIMITED = "pharmacy-secret-" + "p" * 24
FREE = "registration-secret-" + "r" * 24
SLOW = "lab-secret-" + "l" * 24
KEYS = (
    f"pharmacy:{LIMITED}:publish:rate=5/s,registration:{FREE}:publish+read,"
    f"lab:{SLOW}:publish:rate=1/s"
)
GOOD = {"to": {"users": ["p1"]}, "event": "rx.ready", "data": {}}


def publish(
    node: NodeHandle, secret: str, body: object = GOOD, path: str = "/v1/messages"
) -> httpx.Response:
    return httpx.post(
        node.internal_url + path,
        json=body,
        timeout=5 * UNIT,
        headers={"Authorization": f"Bearer {secret}"},
    )


def burst(nodes: list[NodeHandle], secret: str, count: int) -> list[int]:
    """``count`` publishes sent at once (a loaded machine must not stretch them over the refill)."""
    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda i: publish(nodes[i % len(nodes)], secret).status_code,
                             range(count)))  # fmt: skip


def test_one_bucket_across_two_nodes_on_redis(server: RedisServer) -> None:
    with (
        start_node(redis_url=server.url, api_keys=KEYS, node_id="rate-a") as a,
        start_node(redis_url=server.url, api_keys=KEYS, node_id="rate-b") as b,
    ):
        started = time.monotonic()
        codes = burst([a, b], LIMITED, 16)
        elapsed = time.monotonic() - started
        # a full bucket holds 5 and refills at 5/s: what the two nodes took together
        assert codes.count(202) <= 5 + 5 * elapsed + 1, (codes, elapsed)
        assert codes.count(202) >= 5 and codes.count(429) >= 16 - (5 + 5 * elapsed + 1)
        refused = next(r for r in (publish(a, LIMITED) for _ in range(20)) if r.status_code == 429)
        assert refused.json()["error"]["code"] == "rate_limited"
        assert refused.headers["Retry-After"] == "1"  # 1/5 s, rounded up to whole seconds
        # the batch route and the FastAPI path (a body the lane leaves to pydantic) count too
        assert publish(a, SLOW).status_code == 202  # the bucket of 1 is empty now, for 1 s
        batch = publish(b, SLOW, {"messages": [GOOD]}, "/v1/messages/batch")
        odd = publish(a, SLOW, {**GOOD, "to": {"users": ["p1"], "all": False}})
        assert batch.status_code == 429 and odd.status_code == 429, (batch.text, odd.text)
        # another key is not limited
        assert burst([a, b], FREE, 20) == [202] * 20
        # after a second the bucket has refilled
        time.sleep(1.2)
        assert publish(b, LIMITED).status_code == 202
        assert "rate=5/s" not in a.log() and LIMITED not in a.log() + b.log()


def test_per_node_on_the_memory_broker() -> None:
    with start_node(api_keys=KEYS) as node:
        started = time.monotonic()
        codes = burst([node], LIMITED, 15)
        elapsed = time.monotonic() - started
        assert 5 <= codes.count(202) <= 5 + 5 * elapsed + 1, codes
        assert 429 in codes
        assert publish(node, SLOW).status_code == 202  # the bucket of 1 is empty now, for 1 s
        r = publish(node, SLOW)
        assert r.status_code == 429 and r.headers["Retry-After"] == "1"
        assert r.json()["error"] == {
            "code": "rate_limited",
            "message": "key 'lab' is over its publish rate; slow down",
        }
        assert burst([node], FREE, 15) == [202] * 15
