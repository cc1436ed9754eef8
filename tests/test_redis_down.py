"""A node process whose Redis is down when it starts or when it is told to stop.

Real node processes and a redis-server of the test's own, stopped (connections refused) or frozen
(SIGSTOP: connections hang until a timeout).
"""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from collections.abc import Iterator

import httpx
import pytest
from websockets.exceptions import InvalidStatus

from pushsvc.broker.base import Placed, Publication
from pushsvc.brokers import redis_broker
from pushsvc.http.client_listener import edge_factory
from pushsvc.node.gateway import Node
from pushsvc.settings import Settings
from tests.support import (
    API_KEY,
    TOKEN_SECRET,
    UNIT,
    NodeHandle,
    RedisServer,
    launch_node,
    wait_until,
)
from tests.test_broker_contract import message
from tests.wire import Wire

pytestmark = pytest.mark.redis

PUBLISH = {"to": {"users": ["p1"]}, "event": "lab.ready", "data": {"room": 3}}


def status(url: str) -> tuple[int, dict[str, object]]:
    r = httpx.get(url, timeout=2 * UNIT)
    return r.status_code, r.json()


def publish(node: NodeHandle) -> httpx.Response:
    return node.api("POST", "/v1/messages", json=PUBLISH)


def lines(log: str, text: str) -> int:
    return sum(text in line for line in log.splitlines())


@pytest.fixture
def stopped_node(server: RedisServer) -> Iterator[NodeHandle]:
    """A node started while its Redis is stopped; ``server.start()`` brings Redis back on the
    same port."""
    server.stop()
    node = launch_node(redis_url=server.url, ready=False, drain_timeout=3 * UNIT)
    try:
        yield node
    finally:
        node.stop()


async def test_a_node_started_while_redis_is_down_waits_for_it(
    server: RedisServer, stopped_node: NodeHandle
) -> None:
    node = stopped_node
    assert node.proc.poll() is None
    assert status(node.internal_url + "/healthz") == (200, {"status": "ok"})
    assert status(node.http_url + "/healthz")[0] == 200
    code, body = status(node.internal_url + "/readyz")
    assert code == 503 and body["status"] == "not_ready"
    assert body["reasons"] == ["broker_down", "not_started"]

    # A client is refused at once, with an HTTP answer, not left hanging.
    started = time.monotonic()
    with pytest.raises(InvalidStatus) as refused:
        await Wire.open(node.client_url, None)
    assert refused.value.response.status_code == 503
    assert time.monotonic() - started < 2 * UNIT
    # Publishes fail fast with a retryable 503; tokens (no broker needed) still work.
    r = publish(node)
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "broker_unavailable"
    assert r.json()["error"]["retryable"] is True
    assert r.elapsed.total_seconds() < 2 * UNIT
    token = node.token("p1")

    await asyncio.sleep(4 * UNIT)  # a few dozen attempts at the backoff's cap
    log = node.log()
    assert lines(log, "keep trying to join") == 1
    assert lines(log, "still cannot join") == 0  # the same failure every time: no new line
    assert lines(log, "bus not subscribed yet") == 1
    assert len(log.splitlines()) < 15, log
    assert not node.ready()

    server.start()
    wait_until(node.ready, 10 * UNIT)
    assert lines(node.log(), "joined the cluster") == 1
    wire = await Wire.open(node.client_url, token, device="phone")
    try:
        accepted = node.publish(PUBLISH)
        got = await wire.recv_msg()
        assert (got["id"], got["data"]) == (accepted["id"], {"room": 3})
        nodes = node.api("GET", "/v1/nodes").json()["nodes"]
        assert [n["id"] for n in nodes] == [node.node_id]
    finally:
        await wire.ws.close()
    assert node.stop() == 0
    assert "Traceback" not in node.log()


async def test_a_node_that_never_reached_redis_stops_cleanly(
    stopped_node: NodeHandle,
) -> None:
    await asyncio.sleep(0.5 * UNIT)
    started = time.monotonic()
    assert stopped_node.stop() == 0
    assert time.monotonic() - started < 5 * UNIT
    log = stopped_node.log()
    assert "Traceback" not in log
    assert "node stopped" in log
    assert "deregister" not in log  # it never registered: nothing of its own to remove


@pytest.mark.parametrize("outage", ["stopped", "frozen"])
async def test_sigterm_while_redis_is_down_closes_every_session_with_1001_and_exits_0(
    server: RedisServer, outage: str
) -> None:
    drain = 4 * UNIT
    node = launch_node(redis_url=server.url, drain_timeout=drain, registry_interval=0.2)
    try:
        token = node.token("p1")
        wires = [await Wire.open(node.client_url, token, device=f"d{i}") for i in range(3)]
        silent = await Wire.open(node.client_url, None)  # upgraded, no hello yet
        if outage == "stopped":
            server.stop()
        else:
            assert server.proc is not None
            server.proc.send_signal(signal.SIGSTOP)
        wait_until(lambda: not node.ready(), 6 * UNIT)
        await asyncio.sleep(2 * UNIT)  # every heartbeat meanwhile fails: one line says so

        started = time.monotonic()
        node.proc.send_signal(signal.SIGTERM)
        closes = await asyncio.gather(*(w.closed(drain + 2 * UNIT) for w in [*wires, silent]))
        assert [code for code, _, _ in closes] == [1001] * 4
        assert time.monotonic() - started < drain
        code = await asyncio.to_thread(node.proc.wait, drain + 10 * UNIT)
        assert code == 0
        log = node.log()
        assert "Traceback" not in log
        assert "node stopped" in log
        assert lines(log, "could not flush or deregister") == 1
        assert lines(log, "registry heartbeat failed") == 1
    finally:
        node.stop()
        server.stop()


async def test_embedded_node_drains_before_its_api_stops() -> None:
    """Without Redis: the node drains (1001) while its internal API still answers, and exits
    0."""
    node = launch_node(drain_timeout=3 * UNIT)
    try:
        token = node.token("p1")
        wire = await Wire.open(node.client_url, token)
        node.proc.send_signal(signal.SIGTERM)
        code, _, _ = await wire.closed(5 * UNIT)
        assert code == 1001
        assert await asyncio.to_thread(node.proc.wait, 10 * UNIT) == 0
        log = node.log()
        order = [log.index(m) for m in ("node drained", "node stopped")]
        assert order == sorted(order)
        assert "Traceback" not in log
    finally:
        node.stop()


def test_api_key_is_needed_while_redis_is_down(stopped_node: NodeHandle) -> None:
    r = httpx.post(stopped_node.internal_url + "/v1/messages", json=PUBLISH, timeout=2 * UNIT)
    assert r.status_code == 401
    r = httpx.post(
        stopped_node.internal_url + "/v1/messages",
        json=PUBLISH,
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=2 * UNIT,
    )
    assert r.status_code == 503


@pytest.mark.parametrize("busy", ["port", "internal_port"])
def test_a_node_that_cannot_listen_exits_2_and_leaves_nothing_behind(
    server: RedisServer, busy: str
) -> None:
    """It stops what it had started (its Redis connections, the internal API) and exits 2; it
    never joined, so it wrote nothing to Redis."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError, match="node exited with 2"):
            launch_node(redis_url=server.url, **{busy: port})
    assert server.command("DBSIZE").strip() == "0"


def test_a_node_that_cannot_listen_says_why_in_one_line(server: RedisServer) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError) as exited:
            launch_node(redis_url=server.url, port=port)
    output = str(exited.value)
    assert f"cannot listen for clients on 127.0.0.1:{port}" in output
    assert "Traceback" not in output


def commands(server: RedisServer) -> list[str]:
    """The server's count of each command, but INFO (how we ask) and PING (the bus's
    watchdog)."""
    stats = server.command("INFO", "commandstats").splitlines()
    return [line.split(",")[0] for line in stats if line.startswith("cmdstat_")
            and not line.startswith(("cmdstat_info:", "cmdstat_ping:"))]  # fmt: skip


async def test_the_node_closes_only_what_it_opened(server: RedisServer) -> None:
    """The broker is its owner's: a node's close() leaves it open, and a node that was never
    started has nothing to close (it does not drain, register or deregister)."""
    settings = Settings(
        node_id="own", redis_url=server.url, port=0, internal_port=0,
        token_secret=TOKEN_SECRET, api_keys=[API_KEY],
    )  # fmt: skip
    broker = redis_broker(settings)
    await broker.start()
    try:
        before = commands(server)
        await Node(settings, broker).close()
        assert commands(server) == before
        node = Node(settings, broker)
        await node.start(edge_factory(node))
        assert node.joined
        assert [n.id for n in await broker.registry.nodes()] == ["own"]
        await node.close()
        assert await broker.registry.nodes() == []
        assert broker.up
        placed = await broker.publish([Publication(message(), ["user:p"])], origin="owner")
        assert isinstance(placed[0], Placed)  # still open
    finally:
        await broker.close()


async def test_a_redis_outage_is_logged_once_per_kind_not_per_interval(
    server: RedisServer,
) -> None:
    node = launch_node(redis_url=server.url, registry_interval=0.2, ledger_flush_interval=0.05)
    try:
        wire = await Wire.open(node.client_url, node.token("p1"))
        server.stop()
        wait_until(lambda: not node.ready(), 6 * UNIT)
        await wire.ws.close()  # its session's record is now owed to Redis
        await asyncio.sleep(2 * UNIT)  # 40 flushes and 10 heartbeats fail meanwhile
        log = node.log()
        assert lines(log, "accounting flush failed") == 1
        assert lines(log, "registry heartbeat failed") == 1
        server.start()
        wait_until(node.ready, 10 * UNIT)
        wait_until(lambda: lines(node.log(), "accounting flush works again") == 1, 5 * UNIT)
        wait_until(lambda: lines(node.log(), "registry heartbeat works again") == 1, 5 * UNIT)
        sessions = node.api("GET", "/v1/sessions").json()["sessions"]
        assert sessions == []  # the owed record was written: the closed session is gone
    finally:
        node.stop()
    assert "Traceback" not in node.log()
