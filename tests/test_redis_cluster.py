"""Redis Cluster (6 processes, tests/redis_topology.py): the keyspace lives in one slot, both
connections of a node go to that slot's master, and when it is killed they follow the replica
the cluster promotes."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator

import msgspec
import orjson
import pytest
from typer.testing import CliRunner

from cli.main import app
from pushsvc.broker.base import Placed, Publication
from pushsvc.broker.keys import home, key_slot
from pushsvc.brokers import redis_broker
from pushsvc.errors import BrokerUnavailable
from pushsvc.node.publish import new_id
from pushsvc.settings import Settings
from pushsvc.types import Message
from tests.redis_topology import ClusterSetup, RedisProcess, retry_until_placed, start_cluster
from tests.support import UNIT
from tests.test_broker_contract import Recorder, message

pytestmark = pytest.mark.redis


@pytest.fixture
def cluster() -> Iterator[ClusterSetup]:
    with start_cluster() as setup:
        yield setup


def holder(cluster: ClusterSetup, key: str) -> RedisProcess:
    """The master that holds ``key``'s slot."""
    slot = str(key_slot(key))
    return next(m for m in cluster.masters() if _serves(m, slot))


def _serves(master: RedisProcess, slot: str) -> bool:
    for line in master.command("CLUSTER", "NODES").splitlines():
        fields = line.split()
        if "myself" in fields[2]:
            for held in fields[8:]:
                first, _, last = held.partition("-")
                if held[0].isdigit() and int(first) <= int(slot) <= int(last or first):
                    return True
    return False


async def test_the_broker_follows_a_cluster_failover(cluster: ClusterSetup) -> None:
    seen = Recorder()
    broker = redis_broker(Settings(redis_url=cluster.url(), node_id="c"), timeout=0.5 * UNIT)
    broker.bus.subscribe(seen.envelope, seen.command, seen.resync)
    await broker.start()
    await broker.bus.follow(["user:a"])
    try:
        assert broker.up
        first = message()
        [placed] = await broker.publish([Publication(first, ["user:a"])], "test")
        assert isinstance(placed, Placed)
        await seen.until(lambda: len(seen.envelopes) == 1)
        stream = broker.keys.stream("user:a")
        master = holder(cluster, stream)
        assert master.command("WAIT", "1", "5000") == "1"  # its replica has everything
        master.kill()

        started = time.monotonic()
        with pytest.raises(BrokerUnavailable):
            await broker.publish([Publication(message(), ["user:a"])], "test")
        assert time.monotonic() - started < 2 * UNIT
        assert not broker.up

        second = message()
        publication = Publication(second, ["user:a"], key="same", fingerprint="f")
        await retry_until_placed(broker, publication, 20 * UNIT)
        gap = time.monotonic() - started
        assert gap < 15 * UNIT, gap
        await seen.until(lambda: broker.up and seen.resyncs >= 1)
        third = message()
        await broker.publish([Publication(third, ["user:a"])], "test")
        await seen.until(lambda: any(e.message.id == third.id for e in seen.envelopes))
        entries = await broker.history.read("user:a", None, 10)
        assert [entry.message.id for entry in entries] == [first.id, second.id, third.id]
        assert holder(cluster, stream) is not master
    finally:
        await broker.close()


async def test_check_config_reports_the_master_that_holds_the_keyspace(
    cluster: ClusterSetup,
) -> None:
    broker = redis_broker(Settings(redis_url=cluster.url(), node_id="c"))
    try:
        await broker.publish([Publication(message(), ["user:a"])], "test")
    finally:
        await broker.close()
    result = await asyncio.to_thread(
        CliRunner().invoke,
        app,
        ["check-config", "--json"],
        env={
            "PUSHSVC_REDIS_URL": cluster.url(),
            "PUSHSVC_API_KEYS": "k",
            "PUSHSVC_API_URL": None,
            "PUSHSVC_API_KEY": None,
        },
    )
    checks = {c["name"]: c for c in orjson.loads(result.stdout)["checks"]}
    assert checks["redis"]["status"] == "ok"
    assert checks["redis replicas"]["status"] == "ok", checks["redis replicas"]
    masters = cluster.masters()
    for master in masters:  # every master holds some of the 16 partitions
        assert (
            f"master {master.address} takes writes; 1 replica(s) connected"
            in (checks["redis replicas"]["detail"])
        )
    spread = checks["redis partitions"]["detail"]
    assert spread.startswith(f"16 partitions over {len(masters)} master(s)"), spread


def migrate_slot(
    cluster: ClusterSetup, slot: int, source: RedisProcess, dest: RedisProcess
) -> None:
    """Move ``slot`` and its keys from ``source`` to ``dest`` (what ``redis-cli --cluster
    reshard`` does for each slot)."""
    source_id, dest_id = source.command("CLUSTER", "MYID"), dest.command("CLUSTER", "MYID")
    dest.command("CLUSTER", "SETSLOT", str(slot), "IMPORTING", source_id)
    source.command("CLUSTER", "SETSLOT", str(slot), "MIGRATING", dest_id)
    while keys := source.command("CLUSTER", "GETKEYSINSLOT", str(slot), "10").split():
        source.command("MIGRATE", "127.0.0.1", str(dest.port), "", "0", "5000", "KEYS", *keys)
        time.sleep(0.05)  # traffic goes on meanwhile
    for node in cluster.masters():
        node.command("CLUSTER", "SETSLOT", str(slot), "NODE", dest_id)


async def test_a_slot_migration_under_traffic_loses_nothing(cluster: ClusterSetup) -> None:
    """While the slot moves, scripts get ASK or TRYAGAIN (503, retried with the same key); after
    it, MOVED sends the command connection to the new master, and the sharded subscription,
    cancelled by Redis, is made again there. Every key is placed once."""
    broker = redis_broker(Settings(redis_url=cluster.url(), node_id="c"), timeout=0.5 * UNIT)
    seen = Recorder()
    broker.bus.subscribe(seen.envelope, seen.command, seen.resync)
    await broker.start()
    await broker.bus.follow(["user:0", "user:1", "user:2"])
    placed: dict[str, str] = {}  # key -> message id
    refused = 0

    async def publish(count: int) -> None:
        nonlocal refused
        for i in range(count):
            sent = message()
            for _ in range(400):
                try:
                    [outcome] = await broker.publish(
                        [Publication(sent, [f"user:{i % 3}"], key=f"k{i}", fingerprint="f")], "t"
                    )
                except BrokerUnavailable:
                    outcome = None
                if isinstance(outcome, Placed):
                    placed[f"k{i}"] = outcome.id
                    break
                refused += 1
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.005)

    try:
        for i in range(3):  # every stream exists before the move
            await broker.publish([Publication(message(), [f"user:{i}"])], "t")
        moved = broker.keys.stream("user:1")
        source = holder(cluster, moved)
        dest = next(m for m in cluster.masters() if m is not source)
        publishing = asyncio.create_task(publish(120))
        await asyncio.sleep(0.2)
        slot = key_slot(moved)
        await asyncio.to_thread(migrate_slot, cluster, slot, source, dest)
        await publishing
        assert refused > 0  # the move was felt
        assert len(placed) == 120  # each key placed, once
        assert int(source.command("CLUSTER", "COUNTKEYSINSLOT", str(slot))) == 0
        assert holder(cluster, moved) is dest
        ids = set()
        for i in range(3):
            ids |= {e.message.id for e in await broker.history.read(f"user:{i}", None, 1000)}
        assert set(placed.values()) <= ids
        # Redis cancels the sharded subscriptions of a slot that moved: the bus subscribes at
        # the new master and asks for a catch-up (what was published in between is in history)
        await seen.until(lambda: broker.up and seen.resyncs >= 1)
        live = message()
        await broker.publish([Publication(live, ["user:1"])], "t")
        await seen.until(lambda: live.id in {e.message.id for e in seen.envelopes})
    finally:
        await broker.close()


async def test_the_partitions_spread_over_the_masters_and_a_split_publish_is_placed_once(
    cluster: ClusterSetup,
) -> None:
    """Patients' streams land on every master. A keyed message for two patients on two other
    masters, one of them frozen, is refused (503); the retry with its key, under a new id as a
    node would make it, returns the first id and appends nothing twice."""
    broker = redis_broker(Settings(redis_url=cluster.url(), node_id="c"), timeout=0.5 * UNIT)
    await broker.start()
    try:
        users = [f"user:u{i}" for i in range(64)]
        outcomes = await broker.publish([Publication(message(), [u]) for u in users], "t")
        assert all(isinstance(o, Placed) for o in outcomes)
        masters = cluster.masters()
        assert all(int(m.command("DBSIZE")) > 0 for m in masters)

        key = "caller:split"
        bound_at = holder(cluster, broker.keys.idempotency(key))
        first, second = (m for m in masters if m is not bound_at)
        a = next(u for u in users if holder(cluster, broker.keys.stream(u)) is first)
        b = next(u for u in users if holder(cluster, broker.keys.stream(u)) is second)

        def made(streams: list[str]) -> Message:  # as a node makes it: its id names its home
            return msgspec.structs.replace(message(), id=new_id(now_ms(), home(streams, key)))

        sent = made([a, b])
        assert second.proc is not None
        os.kill(second.proc.pid, signal.SIGSTOP)
        try:
            [outcome] = await broker.publish([Publication(sent, [a, b], key, "f")], "t")
        finally:
            os.kill(second.proc.pid, signal.SIGCONT)
        assert isinstance(outcome, BrokerUnavailable), outcome

        retry = Publication(made([a, b]), [a, b], key, "f")
        await retry_until_placed(broker, retry, 10 * UNIT)
        [again] = await broker.publish([retry], "t")
        assert isinstance(again, Placed) and again.duplicate
        assert again.id == sent.id and list(again.offsets) == [a, b]
        for user in (a, b):
            ids = [e.message.id for e in await broker.history.read(user, None, 100)]
            assert ids.count(sent.id) == 1 and retry.message.id not in ids
        trail = await broker.ledger.trail(sent.id)
        assert trail is not None and trail.streams == again.offsets
    finally:
        await broker.close()


def now_ms() -> int:
    return int(time.time() * 1000)
