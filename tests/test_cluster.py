"""A cluster of real node processes on a real redis-server: cross-node delivery and zero loss
through a node's death, Redis restarts, a killed subscription and rolling restarts."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator

import httpx
import pytest

from tests.fleet import Device, Publisher, missing
from tests.support import (
    API_KEY,
    TOKEN_SECRET,
    UNIT,
    NodeHandle,
    RedisServer,
    answers,
    free_port,
    free_ports,
    launch_node,
    pushsvc_command,
    start_redis,
    wait_until,
)
from tests.wire import Wire

pytestmark = pytest.mark.redis

FAST = {"registry_interval": 0.5, "ack_timeout": 2, "heartbeat": 5, "drain_timeout": 3}


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with start_redis(persistent=True) as server:
        yield server


@pytest.fixture
def pair(redis: RedisServer) -> Iterator[list[NodeHandle]]:
    nodes = [launch_node(redis_url=redis.url, node_id=f"node-{n}", **FAST) for n in "ab"]
    try:
        yield nodes
    finally:
        for n in nodes:
            n.stop()


def uid(prefix: str = "p") -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


async def assert_zero_loss(
    devices: list[Device], publisher: Publisher, nodes: list[NodeHandle]
) -> None:
    """Every accepted message reached every device of its user, and every trail says acked."""
    await _eventually(lambda: not missing(devices, publisher.accepted), 30 * UNIT)
    alive = next(n for n in nodes if n.proc.poll() is None)

    def all_acked() -> bool:
        for message_id in publisher.accepted:
            trail = alive.trail(message_id)
            if trail["state"] != "acked":
                return False
        return True

    await _eventually(all_acked, 30 * UNIT)
    for message_id, user in publisher.accepted.items():
        acked = {d["device"] for d in alive.trail(message_id)["devices"] if d["acked_at"]}
        assert acked == {d.name for d in devices if d.user == user}, message_id


async def _eventually(check: Callable[[], object], timeout: float = 15 * UNIT) -> None:
    """Wait until ``check()`` is truthy; it runs in a thread so the devices keep being served."""
    async with asyncio.timeout(timeout):
        while not await asyncio.to_thread(check):
            await asyncio.sleep(0.1)


def fleet(nodes: list[NodeHandle], users: int = 3, per_user: int = 2) -> list[Device]:
    devices = []
    for u in range(users):
        user = uid(f"u{u}")
        token = nodes[0].token(user)
        for d in range(per_user):
            # spread first connections over the nodes; every device can use every node
            urls = [n.client_url for n in nodes]
            shift = (u * per_user + d) % len(urls)
            devices.append(Device(user, f"{user}-dev{d}", token, urls[shift:] + urls[:shift]))
    return devices


@contextlib.asynccontextmanager
async def connected(
    nodes: list[NodeHandle], users: int = 3
) -> AsyncIterator[tuple[list[Device], Publisher, list[str]]]:
    """A running fleet (every device connected), a publisher over ``nodes``, the users' ids."""
    devices = fleet(nodes, users=users)
    for d in devices:
        d.start()
    try:
        await _eventually(lambda: all(d.connections for d in devices), 10 * UNIT)
        yield devices, Publisher(nodes), sorted({d.user for d in devices})
    finally:
        for d in devices:
            await d.stop()


async def test_a_publish_on_any_node_reaches_every_session_on_every_node(
    pair: list[NodeHandle],
) -> None:
    a, b = pair
    user, topic = uid(), uid("clinic")
    on_a = await Wire.open(a.client_url, a.token(user, [topic]), device="phone")
    on_b = await Wire.open(b.client_url, b.token(user, [topic]), device="laptop")
    assert (on_a.welcome["node"], on_b.welcome["node"]) == ("node-a", "node-b")
    for via in (a, b):
        for body in ({"to": {"users": [user]}, "event": "queue.called", "data": {"room": "205"}},
                     {"to": {"topics": [topic]}, "event": "queue.position", "data": {"n": 2}},
                     {"to": {"all": True}, "event": "notice", "data": "hello"}):  # fmt: skip
            result = via.publish(body)
            got = [await on_a.recv_msg(), await on_b.recv_msg()]
            assert {m["id"] for m in got} == {result["id"]}
    # the cluster-wide views
    sessions = wait_until(
        lambda: (
            len(s := a.api("GET", "/v1/sessions", params={"user": user}).json()["sessions"]) == 2
            and s
        )
    )
    assert {s["node"] for s in sessions} == {"node-a", "node-b"}
    assert {n["id"] for n in a.api("GET", "/v1/nodes").json()["nodes"]} == {"node-a", "node-b"}
    # an operator on node a closes a session held by node b
    r = a.api("DELETE", f"/v1/sessions/{on_b.welcome['session']}")
    assert r.status_code == 202 and r.json()["node"] == "node-b"
    code, _, _ = await on_b.closed()
    assert code == 4010
    await on_a.close()


async def test_kill_9_a_node_while_publishing_loses_nothing(pair: list[NodeHandle]) -> None:
    a = pair[0]
    async with connected(pair) as (devices, publisher, users):
        assert {d.nodes[0] for d in devices} == {"node-a", "node-b"}
        for i in range(60):
            await publisher.publish(users[i % len(users)], i)
            if i == 25:
                await asyncio.to_thread(a.kill)  # kill -9: no drain, sockets reset
            await asyncio.sleep(0.01)
        await assert_zero_loss(devices, publisher, pair)
        moved = [d for d in devices if d.nodes[0] == "node-a"]
        assert moved and all(d.nodes[-1] == "node-b" for d in moved)


async def test_redis_restart_fails_publishes_fast_then_loses_nothing(
    pair: list[NodeHandle], redis: RedisServer
) -> None:
    a, b = pair
    async with connected(pair, users=2) as (devices, publisher, users):
        for i in range(10):
            await publisher.publish(users[i % 2], i)
        await asyncio.to_thread(redis.stop)
        # publishes fail fast with 503 and a JSON error; the nodes say they are not ready
        async with httpx.AsyncClient(timeout=5) as http:
            r = await http.post(a.internal_url + "/v1/messages", json={"to": {"all": True}, "event": "x"},
                                headers={"Authorization": f"Bearer {a.api_key}"})  # fmt: skip
            assert r.status_code == 503 and r.json()["error"]["code"] == "broker_unavailable"
            assert r.elapsed.total_seconds() < 2.5
            await _eventually(lambda: httpx.get(b.internal_url + "/readyz").status_code == 503)
            await _eventually(
                lambda: "pushsvc_broker_up 0.0" in httpx.get(a.internal_url + "/metrics").text
            )
        await asyncio.to_thread(redis.start)
        await _eventually(lambda: a.ready() and b.ready())
        for i in range(10, 30):
            await publisher.publish(users[i % 2], i)
        await assert_zero_loss(devices, publisher, pair)
        await _eventually(
            lambda: "pushsvc_broker_up 1.0" in httpx.get(b.internal_url + "/metrics").text
        )


async def test_killed_subscription_is_noticed_and_caught_up(
    pair: list[NodeHandle], redis: RedisServer
) -> None:
    async with connected(pair, users=2) as (devices, publisher, users):
        for i in range(40):
            await publisher.publish(users[i % 2], i)
            if i in (10, 25):
                await asyncio.to_thread(redis.command, "CLIENT", "KILL", "TYPE", "pubsub")
        await assert_zero_loss(devices, publisher, pair)
        assert all(d.connections == 1 for d in devices)  # nobody had to reconnect


async def test_rolling_restart_of_every_node_loses_nothing(
    pair: list[NodeHandle], redis: RedisServer
) -> None:
    nodes = list(pair)
    async with connected(nodes) as (devices, publisher, users):
        seq = 0
        for round_ in range(2):
            for i in range(len(nodes)):
                old = nodes[i]
                await asyncio.to_thread(
                    old.stop, signal.SIGTERM
                )  # drain: 1001, clients resume elsewhere
                assert old.proc.returncode == 0, old.log()[-2000:]
                for _ in range(8):
                    await publisher.publish(users[seq % len(users)], seq)
                    seq += 1
                nodes[i] = await asyncio.to_thread(
                    launch_node, redis_url=redis.url, node_id=old.node_id, port=old.port,
                    internal_port=old.internal_port, **FAST,
                )  # fmt: skip
                pair[i] = nodes[i]
                publisher.nodes = nodes
            assert round_ >= 0
        await assert_zero_loss(devices, publisher, nodes)
        assert 1001 in {c for d in devices for c in d.close_codes}


async def test_workers_share_the_port_and_deliver_across_each_other(redis: RedisServer) -> None:
    node = launch_node(
        "--workers", "2", redis_url=redis.url, node_id="w", internal_port=free_ports(2), **FAST
    )
    try:
        internal = [f"http://127.0.0.1:{node.internal_port + i}" for i in range(2)]
        wait_until(lambda: all(answers(u + "/readyz") for u in internal))
        user = uid()
        token = node.token(user)
        clients = [await Wire.open(node.client_url, token, device=f"d{i}") for i in range(12)]
        assert {c.welcome["node"] for c in clients} == {"w-0", "w-1"}  # the kernel spreads them
        async with httpx.AsyncClient() as http:
            r = await http.post(internal[1] + "/v1/messages", json={"to": {"users": [user]}, "event": "x"},
                                headers={"Authorization": f"Bearer {node.api_key}"})  # fmt: skip
        result = r.json()
        for c in clients:
            assert (await c.recv_msg())["id"] == result["id"]
            await c.close()
    finally:
        assert node.stop() == 0


def test_workers_stop_with_exit_2_when_one_cannot_start(redis: RedisServer) -> None:
    """A worker that exits 2 (a port it cannot bind, settings it refuses) stops them all with 2:
    restarting it would only loop on the same error."""
    internal = free_ports(2)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", internal + 1))  # worker 1's internal port
        busy.listen()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHSVC_")}
        env.update(PUSHSVC_TOKEN_SECRET=TOKEN_SECRET, PUSHSVC_API_KEYS=API_KEY)
        done = subprocess.run(
            [*pushsvc_command(), "serve", "--workers", "2", "--redis-url", redis.url,
             "--port", str(free_port()), "--internal-port", str(internal)],
            env=env, capture_output=True, text=True, timeout=30 * UNIT, check=False,
        )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "cannot listen for the internal API" in done.stderr
    assert "exited with 2 (its error is above); stopping" in done.stderr
    assert "restarting" not in done.stderr
