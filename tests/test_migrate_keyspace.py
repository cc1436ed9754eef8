"""``pushsvc migrate-keyspace`` on what nodes of the layout before partitions wrote, against a
real standalone Redis and a real Redis Cluster: written by hand as those nodes wrote it, moved,
then read by a broker of this layout."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator

import msgspec
import orjson
import pytest
from typer.testing import CliRunner

from cli.main import app
from pushsvc.broker.base import Placed, Publication, Published, bucket_of
from pushsvc.broker.keys import Keyspace
from pushsvc.broker.redis.link import Link
from pushsvc.brokers import redis_broker
from pushsvc.settings import Settings
from pushsvc.types import Message
from tests.redis_topology import start_cluster
from tests.support import start_redis
from tests.test_broker_contract import node

pytestmark = pytest.mark.redis

HOUR_MS = 3_600_000


@pytest.fixture(params=["redis", "cluster"])
def url(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "redis":
        with start_redis() as server:
            yield server.url
    else:
        with start_cluster() as cluster:
            yield cluster.url()


def old_id(now_ms: int) -> str:
    """An id as nodes made them before: time, then 20 random hex digits."""
    return f"{now_ms:012x}{random.getrandbits(80):020x}"


def message(message_id: str, now_ms: int, n: int) -> Message:
    data = msgspec.Raw(orjson.dumps({"n": n}))
    return Message(message_id, "queue.called", data, now_ms, True, now_ms + HOUR_MS)


def cli(url: str, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["migrate-keyspace", *args],
                                env={"PUSHSVC_REDIS_URL": url})  # fmt: skip
    return result.exit_code, result.stdout if result.exit_code == 0 else result.output


async def test_what_older_nodes_wrote_is_found_after_the_migration(url: str) -> None:
    cluster = url.startswith("redis+cluster://")
    c = "{pushsvc:}" if cluster else "pushsvc:"  # the old prefix of every key
    now = int(time.time() * 1000)
    m1, m2, orphan = (message(old_id(now), now, n) for n in range(3))
    encode = msgspec.json.encode
    # the layout before partitions, as its nodes wrote it (one slot on Cluster)
    old = Link(url, 2.0, slot_key=Keyspace(one_slot=cluster).nodes)
    try:
        off1 = (await old.call("XADD", f"{c}stream:user:p1", "*", "m", encode(m1))).decode()
        off2 = (await old.call("XADD", f"{c}stream:user:p1", "*", "r", m2.id)).decode()
        off3 = (await old.call("XADD", f"{c}stream:user:p2", "*", "r", m2.id)).decode()
        published = Published(m1.id, m1.event, m1.ts / 1000, m1.expires / 1000, True,
                              {"user:p1": off1})  # fmt: skip
        bucket = bucket_of(m1.id)
        assert bucket is not None
        await old.pipeline([
            ("EXPIRE", f"{c}stream:user:p1", 3600), ("EXPIRE", f"{c}stream:user:p2", 3600),
            ("SET", f"{c}body:{m2.id}", encode(m2), "PX", HOUR_MS),
            ("SET", f"{c}body:{orphan.id}", encode(orphan), "PX", HOUR_MS),
            ("HSET", f"{c}trail:{m1.id}", "p", encode(published),
             "k:phone", encode(("s1", "n1", time.time()))),
            ("PEXPIRE", f"{c}trail:{m1.id}", HOUR_MS),
            ("SET", f"{c}idem:caller:k1",
             encode({"id": m1.id, "offsets": {"user:p1": off1}, "fingerprint": "f"}),
             "PX", HOUR_MS),
            ("HSET", f"{c}tally:{bucket}", "published:n1", 2, "acked:n1", 1),
            ("SADD", f"{c}msgs:{bucket}", m1.id, m2.id),
        ])  # fmt: skip
    finally:
        await old.aclose()

    broker = redis_broker(Settings(redis_url=url, node_id="after"))
    try:
        # refused while a node runs; a dry run counts and moves nothing
        await broker.registry.register(node("n1"), 30)
        code, text = await asyncio.to_thread(cli, url)
        assert code == 1 and "stop every node" in text, text
        code, text = await asyncio.to_thread(cli, url, "--dry-run", "--json")
        assert code == 0 and orjson.loads(text)["keys"]["stream"] == 2
        await broker.registry.deregister("n1")

        code, text = await asyncio.to_thread(cli, url, "--json")
        assert code == 0, text
        moved = orjson.loads(text)
        assert moved["keys"] == {"stream": 2, "trail": 1, "idem": 1, "tally": 1, "msgs": 1,
                                 "body": 2}  # fmt: skip
        assert moved["dropped_bodies"] == 1  # the orphan: no entry refers to it

        p1 = await broker.history.read("user:p1", None, 10)
        assert [(e.offset, e.message) for e in p1] == [(off1, m1), (off2, m2)]
        p2 = await broker.history.read("user:p2", None, 10)
        assert [(e.offset, e.message) for e in p2] == [(off3, m2)]
        trail = await broker.ledger.trail(m1.id)
        assert trail is not None and trail.streams == {"user:p1": off1}
        assert await broker.ledger.acked_ids("phone", [m1.id, m2.id]) == {m1.id}
        tally = (await broker.ledger.tallies([bucket]))[bucket]
        assert tally["n1"] == {"published": 2, "acked": 1}
        assert await broker.ledger.bucket_messages(bucket) == sorted([m1.id, m2.id])
        # the key is still bound: a retry returns the first message, appends nothing
        retry = Publication(message(old_id(now), now, 9), ["user:p1"], "caller:k1", "f")
        [again] = await broker.publish([retry], "after")
        assert isinstance(again, Placed) and again.duplicate and again.id == m1.id
        assert len(await broker.history.read("user:p1", None, 10)) == 2
        # TTLs kept; nothing of the old layout left; a second run moves nothing
        link = broker.partitions.link(broker.partitions.group(broker.keys.partition("user:p1")))
        assert 0 < int(await link.call("PTTL", broker.keys.stream("user:p1"))) <= HOUR_MS
        code, text = await asyncio.to_thread(cli, url, "--json")
        assert code == 0 and set(orjson.loads(text)["keys"].values()) == {0}
    finally:
        await broker.close()
