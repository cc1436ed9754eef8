"""Following a Sentinel failover: a master, replicas and three sentinels (tests/redis_topology.py),
the master killed with SIGKILL. Every connection finds the new master by itself; in the gap
publishes are refused (503, retryable) and ``/readyz`` says 503; afterwards the same-key retries
have placed every message once and every device has every message."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import orjson
import pytest
from typer.testing import CliRunner

from cli.main import app
from pushsvc.broker.base import Placed, Publication
from pushsvc.brokers import redis_broker
from pushsvc.core.streams import user_stream
from pushsvc.errors import BrokerUnavailable
from pushsvc.settings import Settings
from tests.fleet import missing
from tests.redis_topology import SentinelSetup, retry_until_placed, start_sentinel
from tests.support import UNIT, launch_node, start_redis
from tests.test_broker_contract import Recorder, message
from tests.test_cluster import FAST, _eventually, connected

pytestmark = pytest.mark.redis


@pytest.fixture
def sentinel() -> Iterator[SentinelSetup]:
    with start_sentinel(replicas=1) as setup:
        yield setup


async def test_the_broker_follows_a_failover(sentinel: SentinelSetup) -> None:
    seen = Recorder()
    broker = redis_broker(Settings(redis_url=sentinel.url(), node_id="follow"), timeout=0.5 * UNIT)
    broker.bus.subscribe(seen.envelope, seen.command, seen.resync)
    await broker.start()
    await broker.bus.follow(["user:a"])
    try:
        assert broker.up
        first = message()
        [placed] = await broker.publish([Publication(first, ["user:a"])], "test")
        assert isinstance(placed, Placed)
        await seen.until(lambda: len(seen.envelopes) == 1)
        await asyncio.to_thread(sentinel.wait_in_sync)
        old = sentinel.master_port()
        assert old is not None
        sentinel.master().kill()

        # the gap: refused fast, and the broker says it is down
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable):
            await broker.publish([Publication(message(), ["user:a"])], "test")
        assert time.monotonic() - started < 2 * UNIT
        assert not broker.up

        new = await asyncio.to_thread(sentinel.wait_failover, old)
        assert new != old
        second = message()
        publication = Publication(second, ["user:a"], key="same", fingerprint="f")
        await retry_until_placed(broker, publication, 15 * UNIT)
        await seen.until(lambda: broker.up and seen.resyncs >= 1)
        # the subscription is on the new master: it hears what is published there
        third = message()
        await broker.publish([Publication(third, ["user:a"])], "test")
        await seen.until(lambda: any(e.message.id == third.id for e in seen.envelopes))
        entries = await broker.history.read("user:a", None, 10)
        assert [entry.message.id for entry in entries] == [first.id, second.id, third.id]
    finally:
        await broker.close()


async def test_a_node_leaves_a_master_the_sentinels_no_longer_name(
    sentinel: SentinelSetup,
) -> None:
    """A master Sentinel failed over while it kept running (cut off from the sentinels but not
    from the node here; a second failover right after the first does the same) still takes
    writes: the node must move both connections to the master the sentinels name, though
    neither was dropped and ROLE still says master there (what it would publish on the old one
    is lost when Sentinel demotes it, or refused with ``min_replicas`` > 0)."""
    seen = Recorder()
    broker = redis_broker(Settings(redis_url=sentinel.url(), node_id="cut"), timeout=0.5 * UNIT)
    broker.bus.subscribe(seen.envelope, seen.command, seen.resync)
    stream = broker.keys.stream("user:c")
    old = sentinel.master()
    [new] = sentinel.replicas()
    auth = ("-a", "cut-off", "--no-auth-warning")
    await broker.start()
    await broker.bus.follow(["user:c"])
    try:
        [placed] = await broker.publish([Publication(message(), ["user:c"])], "t")
        assert isinstance(placed, Placed)
        # The partition: connections made from now on, the sentinels' too, are refused; the
        # node's stay, as they would on the side of a partition the master is on.
        old.command("CONFIG", "SET", "requirepass", "cut-off")
        for line in old.command(*auth, "CLIENT", "LIST").splitlines():
            fields = dict(f.partition("=")[::2] for f in line.split())
            if fields.get("name", "").startswith("sentinel-"):
                old.command(*auth, "CLIENT", "KILL", "ID", fields["id"])
        assert await asyncio.to_thread(sentinel.wait_failover, old.port) == new.port

        async def on_the_new_master() -> bool:
            sent = message()
            try:
                await broker.publish([Publication(sent, ["user:c"])], "t")
            except BrokerUnavailable:
                return False
            await asyncio.sleep(0.1)
            heard = any(e.message.id == sent.id for e in seen.envelopes)
            return heard and sent.id in new.command("XRANGE", stream, "-", "+")

        async with asyncio.timeout(5 * UNIT):
            while not await on_the_new_master():
                await asyncio.sleep(0.1)
        assert old.command(*auth, "ROLE").startswith("master")  # cut off: still a master
        assert broker.up
    finally:
        await broker.close()


@pytest.mark.parametrize(
    ("replicas", "min_replicas"),
    [(1, 0), (2, 1)],
    ids=["async-replication", "min-replicas-1"],
)
async def test_a_failover_under_publishing_loses_nothing(replicas: int, min_replicas: int) -> None:
    with start_sentinel(replicas=replicas) as sentinel:
        await _publish_through_a_failover(sentinel, min_replicas)


async def _publish_through_a_failover(sentinel: SentinelSetup, min_replicas: int) -> None:
    nodes = [
        launch_node(
            redis_url=sentinel.url(), redis_min_replicas=min_replicas, node_id=f"node-{n}", **FAST
        )
        for n in "ab"
    ]
    a = nodes[0]
    try:
        async with connected(nodes, users=2) as (devices, publisher, users):
            readiness: list[int] = []
            done = asyncio.Event()

            async def watch() -> None:
                async with httpx.AsyncClient(timeout=UNIT) as http:
                    while not done.is_set():
                        try:
                            readiness.append(
                                (await http.get(a.internal_url + "/readyz")).status_code
                            )
                        except httpx.HTTPError:
                            readiness.append(0)
                        await asyncio.sleep(0.05)

            async def publish(count: int) -> None:
                for i in range(count):
                    await publisher.publish(users[i % 2], i)
                    await asyncio.sleep(0.01)

            watcher = asyncio.create_task(watch())
            publishing = asyncio.create_task(publish(80))
            await _eventually(lambda: len(publisher.accepted) >= 20)
            old = sentinel.master_port()
            assert old is not None
            sentinel.master().kill()
            killed = time.monotonic()
            count = len(publisher.accepted)
            await asyncio.to_thread(sentinel.wait_failover, old)
            await _eventually(lambda: len(publisher.accepted) > count + 1, 20 * UNIT)
            gap = time.monotonic() - killed
            await publishing
            await _eventually(lambda: all(n.ready() for n in nodes), 15 * UNIT)
            await asyncio.sleep(0.2)
            done.set()
            await watcher

            assert publisher.refused > 0  # the gap was seen, and retried
            assert 503 in readiness and readiness[-1] == 200, readiness
            assert gap < 10 * UNIT, gap
            await _eventually(lambda: not missing(devices, publisher.accepted), 30 * UNIT)
            assert len(publisher.accepted) == 80  # one id per key
            for device in devices:
                assert device.duplicates == 0, device.name  # no id delivered twice
                # A publish refused (503) because the master died right after its script ran
                # was announced already; when no replica had it, its retry on the new master
                # places it again under a new id: at most one extra per refusal, never an
                # accepted message twice.
                extra = [m for i, m in device.received.items() if i not in publisher.accepted]
                seqs = [m["data"]["seq"] for m in device.received.values()]
                assert len(seqs) - len(set(seqs)) == len(extra) <= publisher.refused
    finally:
        for node in nodes:
            node.stop()


async def test_min_replicas_refuses_a_publish_no_replica_confirmed(sentinel: SentinelSetup) -> None:
    node = launch_node(redis_url=sentinel.url(), redis_min_replicas=1, **FAST)
    try:
        body = {"to": {"users": ["u1"]}, "event": "queue.called", "data": {"room": 1}}
        first = node.api("POST", "/v1/messages", json=body)
        assert first.status_code == 202, first.text
        [replica] = sentinel.replicas()
        await asyncio.to_thread(replica.stop)
        keyed = {**body, "idempotency_key": "visit-7"}
        started = time.monotonic()
        refused = node.api("POST", "/v1/messages", json=keyed)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["retryable"] is True
        assert time.monotonic() - started < 3 * UNIT
        await asyncio.to_thread(replica.start)
        await asyncio.to_thread(sentinel.wait_in_sync)
        again = node.api("POST", "/v1/messages", json=keyed)
        assert again.status_code == 202, again.text
        reader = redis_broker(Settings(redis_url=sentinel.url()))
        try:
            entries = await reader.history.read(user_stream("u1"), None, 10)
        finally:
            await reader.close()
        ids = [entry.message.id for entry in entries]
        assert ids == [first.json()["id"], again.json()["id"]]  # the refused one, placed once
    finally:
        node.stop()


async def test_with_min_replicas_only_confirmed_writes_are_announced(
    sentinel: SentinelSetup,
) -> None:
    """A publish WAIT did not confirm is appended but its envelope is not published (a master
    about to lose its place must show nobody what it cannot keep); the retry with its key
    announces the first placement once it is confirmed, and another request under that key
    announces nothing."""
    seen = Recorder()
    settings = Settings(redis_url=sentinel.url(), redis_min_replicas=1, node_id="fence")
    broker = redis_broker(settings, timeout=0.5 * UNIT)
    broker.bus.subscribe(seen.envelope, seen.command, seen.resync)
    await broker.start()
    await broker.bus.follow(["user:f"])
    try:
        first = message()
        [placed] = await broker.publish([Publication(first, ["user:f"])], "t")
        assert isinstance(placed, Placed)
        await seen.until(lambda: len(seen.envelopes) == 1)
        assert seen.envelopes[0].after == "0-0"
        [replica] = sentinel.replicas()
        await asyncio.to_thread(replica.stop)
        second = message()
        keyed = Publication(second, ["user:f"], key="c:k", fingerprint="f")
        [refused] = await broker.publish([keyed], "t")
        assert isinstance(refused, BrokerUnavailable)
        await asyncio.sleep(0.3 * UNIT)
        assert len(seen.envelopes) == 1  # appended, not announced
        with pytest.raises(BrokerUnavailable):  # nor read: a resume would show it
            await broker.history.read("user:f", None, 10)
        await asyncio.to_thread(replica.start)
        await asyncio.to_thread(sentinel.wait_in_sync)
        entries = await broker.history.read("user:f", None, 10)
        assert [e.message.id for e in entries] == [first.id, second.id]
        [again] = await broker.publish([keyed], "t")
        assert isinstance(again, Placed) and again.duplicate and again.id == second.id
        await seen.until(lambda: len(seen.envelopes) == 2)
        announced = seen.envelopes[1]
        assert (announced.message, announced.offsets) == (second, again.offsets)
        assert announced.after == placed.offsets["user:f"]
        other = Publication(message(), ["user:f"], key="c:k", fingerprint="g")
        [bound] = await broker.publish([other], "t")
        assert isinstance(bound, Placed) and bound.duplicate and bound.id == second.id
        await asyncio.sleep(0.3 * UNIT)
        assert len(seen.envelopes) == 2
    finally:
        await broker.close()


def test_check_config_reports_the_sentinel_topology(sentinel: SentinelSetup) -> None:
    def checks(**env: str) -> dict[str, dict[str, str]]:
        result = CliRunner().invoke(
            app,
            ["check-config", "--json"],
            env={
                "PUSHSVC_REDIS_URL": sentinel.url(),
                "PUSHSVC_API_KEYS": "k",
                "PUSHSVC_API_URL": None,
                "PUSHSVC_API_KEY": None,
                **env,
            },
        )
        return {c["name"]: c for c in orjson.loads(result.stdout)["checks"]}

    master = sentinel.master().address
    found = checks(PUSHSVC_REDIS_MIN_REPLICAS="1")
    assert found["redis"]["status"] == "ok"
    assert found["redis sentinel"]["status"] == "ok", found["redis sentinel"]
    assert (
        f"3 of 3 sentinels answer for 'pushsvc-test', master {master}; OK"
        in (found["redis sentinel"]["detail"])
    )
    assert found["redis replicas"] == {
        "name": "redis replicas",
        "status": "ok",
        "detail": f"master {master} takes writes; 1 replica(s) connected, "
        "PUSHSVC_REDIS_MIN_REPLICAS=1",
    }
    assert checks(PUSHSVC_REDIS_MIN_REPLICAS="2")["redis replicas"]["status"] == "fail"
    sentinel.sentinels[0].stop()
    found = checks()
    assert found["redis sentinel"]["status"] == "warn"
    assert found["redis sentinel"]["detail"].startswith("2 of 3 sentinels answer")


async def test_with_every_sentinel_down_the_known_master_is_still_used(
    sentinel: SentinelSetup,
) -> None:
    broker = redis_broker(Settings(redis_url=sentinel.url(), node_id="alone"), timeout=0.5 * UNIT)
    broker.bus.subscribe(Recorder().envelope, Recorder().command)
    await broker.start()
    try:
        assert broker.up
        for process in sentinel.sentinels:
            await asyncio.to_thread(process.stop)
        await asyncio.to_thread(sentinel.data[0].command, "CLIENT", "KILL", "TYPE", "normal")
        await asyncio.to_thread(sentinel.data[0].command, "CLIENT", "KILL", "TYPE", "pubsub")
        async with asyncio.timeout(10 * UNIT):  # both connections come back to the same master
            while True:
                try:
                    [placed] = await broker.publish([Publication(message(), ["user:a"])], "t")
                except BrokerUnavailable:
                    await asyncio.sleep(0.05)
                    continue
                if isinstance(placed, Placed) and broker.up:
                    break
                await asyncio.sleep(0.05)
    finally:
        await broker.close()


async def test_a_demoted_master_makes_the_node_unready_until_it_is_master_again() -> None:
    """A server turned replica answers reads: the node must not call itself ready on them."""
    with start_redis() as server, start_redis() as other:
        node = launch_node(redis_url=server.url, **FAST)
        try:
            server.command("REPLICAOF", "127.0.0.1", str(other.port))
            await _eventually(lambda: not node.ready(), 10 * UNIT)
            body = {"to": {"users": ["u1"]}, "event": "queue.called", "data": {"room": 1}}
            refused = node.api("POST", "/v1/messages", json=body)
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["retryable"] is True
            for _ in range(5):  # reads would succeed on the replica: they must not count
                node.api("GET", "/v1/nodes")
                assert not node.ready()
                await asyncio.sleep(FAST["registry_interval"] / 2)
            server.command("REPLICAOF", "NO", "ONE")
            await _eventually(node.ready, 10 * UNIT)
            assert node.api("POST", "/v1/messages", json=body).status_code == 202
        finally:
            node.stop()
