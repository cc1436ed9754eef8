"""A restarted Redis still reading its data answers ``LOADING``: every broker path turns that
into BrokerUnavailable (a 503 the caller retries), raised or in a publish's outcomes, never a
value handed on and never a 500."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pushsvc.broker.base import Placed, Publication
from pushsvc.brokers import redis_broker
from pushsvc.errors import BrokerUnavailable
from pushsvc.settings import Settings
from tests.support import UNIT, RedisServer, free_port, wait_until
from tests.test_broker_contract import message

pytestmark = pytest.mark.redis


def cli(port: int, *args: str) -> str:
    binary = shutil.which("redis-cli")
    assert binary, "redis-cli is not installed"
    done = subprocess.run([binary, "-p", str(port), *args], capture_output=True, check=True)
    return done.stdout.decode().strip()


@pytest.fixture
def loading() -> Iterator[RedisServer]:
    """A redis-server started on a snapshot of 20,000 keys it loads slowly (200 µs a key, events
    served every KiB): it answers ``LOADING`` for about 4 s."""
    with tempfile.TemporaryDirectory(prefix="pushsvc-redis-") as tmp:
        first = RedisServer(free_port(), Path(tmp))
        first.start()
        fill = "for i = 1, 20000 do redis.call('SET', 'filler:' .. i, string.rep('x', 64)) end"
        cli(first.port, "EVAL", fill, "0")
        cli(first.port, "SAVE")
        first.stop()
        binary = shutil.which("redis-server")
        assert binary
        server = RedisServer(free_port(), Path(tmp))
        server.proc = subprocess.Popen(
            [binary, "--port", str(server.port), "--bind", "127.0.0.1", "--dir", tmp,
             "--dbfilename", "dump.rdb", "--save", "", "--appendonly", "no",
             "--key-load-delay", "200", "--loading-process-events-interval-bytes", "1024"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_until(lambda: _says_loading(server.port), 10 * UNIT)
            yield server
        finally:
            server.stop()


def _says_loading(port: int) -> bool:
    try:
        return "LOADING" in cli(port, "PING")
    except subprocess.CalledProcessError as exc:
        return b"LOADING" in exc.stdout + exc.stderr


async def test_every_path_answers_unavailable_while_redis_loads(loading: RedisServer) -> None:
    broker = redis_broker(Settings(redis_url=loading.url, node_id="loading"), timeout=2 * UNIT)
    try:
        calls = {
            "history": lambda: broker.history.read("user:p", None, 10),
            "history offset": lambda: broker.history.last_offset("user:p"),
            "ledger trail": lambda: broker.ledger.trail("m1"),
            "ledger tallies": lambda: broker.ledger.tallies([0, 5]),
            "lease": lambda: broker.lease.acquire("m", 5),
            "registry": broker.registry.nodes,
            "heartbeats": broker.registry.heartbeats,
        }
        for name, call in calls.items():
            with pytest.raises(BrokerUnavailable):
                await call()
            assert _says_loading(loading.port), f"{name}: Redis finished loading too early"
        items = [Publication(message(), ["user:p"]), Publication(message(), ["user:p"], "c:k", "f")]
        outcomes = await broker.publish(items, "loading")
        assert [type(o) for o in outcomes] == [BrokerUnavailable, BrokerUnavailable]
        assert _says_loading(loading.port)
        # loaded: the same calls work again
        await asyncio.to_thread(wait_until, lambda: not _says_loading(loading.port), 30 * UNIT)
        assert await broker.history.read("user:p", None, 10) == []
        outcomes = await broker.publish(items, "loading")
        assert all(isinstance(o, Placed) for o in outcomes), outcomes
    finally:
        await broker.close()
