"""The client over real sockets.

Two servers: a scripted WebSocket server on a free port, whose every connection follows a script
written in the test (close codes, duplicates, silence, pings on demand), and a real
``pushsvc serve`` node from ``tests/support.py`` for the end-to-end contract.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import orjson
import pytest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from pushsvc.client import (
    ClientClosed,
    ClientError,
    ClosedByOperator,
    ConnectionEnded,
    ConnectionLost,
    NotConnected,
    PushClient,
    State,
    Unauthorized,
    refresh_delay,
)
from tests.support import UNIT, NodeHandle, start_node


async def eventually(check: Callable[[], bool], within: float = 3 * UNIT) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(0.01)


# --- scripted server ------------------------------------------------------------------------------


class Conn:
    """One accepted connection, as a script sees it. Every client frame read is recorded."""

    def __init__(self, ws: ServerConnection, server: ScriptedServer, index: int) -> None:
        self.ws, self.server, self.index = ws, server, index

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send(orjson.dumps(frame).decode())

    async def welcome(self, heartbeat: float = 25) -> None:
        await self.send(
            {
                "type": "welcome",
                "session": f"s{self.index}",
                "node": "n1",
                "user": "p1",
                "heartbeat": heartbeat,
                "replayed": 0,
            }
        )

    async def msg(
        self, msg_id: str, offset: str = "1-0", stream: str = "user:p1", *, ack: bool = True
    ) -> None:
        await self.send(
            {
                "type": "msg",
                "id": msg_id,
                "stream": stream,
                "offset": offset,
                "event": "queue.called",
                "data": {"n": msg_id},
                "ts": 1700000000000,
                "ack": ack,
                "replay": False,
            }
        )

    async def recv(self) -> dict[str, Any]:
        frame: dict[str, Any] = orjson.loads(await self.ws.recv())
        self.server.frames.append(frame)
        if frame["type"] == "ack":
            self.server.acked.extend(frame["ids"])
        return frame

    async def read_until(self, done: Callable[[dict[str, Any]], bool]) -> None:
        async with asyncio.timeout(5 * UNIT):
            while not done(await self.recv()):
                pass

    async def acked(self, *ids: str) -> None:
        """Read until every id in ``ids`` has been acked at least once more than before."""
        want = {i: self.server.acked.count(i) + 1 for i in ids}
        await self.read_until(
            lambda _: all(self.server.acked.count(i) >= n for i, n in want.items())
        )

    async def drain(self) -> None:
        """Keep reading (and recording) until the client goes away; answer pings."""
        while True:
            if (await self.recv())["type"] == "ping":
                await self.send({"type": "pong"})

    async def close(self, code: int, reason: str = "") -> None:
        await self.ws.close(code, reason)


Script = Callable[[Conn], Awaitable[None]]


class ScriptedServer:
    """Connection ``i`` runs ``scripts[i]`` (the last one repeats) after reading the hello."""

    def __init__(self, scripts: tuple[Script, ...]) -> None:
        self.scripts = scripts
        self.hellos: list[dict[str, Any]] = []
        self.frames: list[dict[str, Any]] = []
        self.acked: list[str] = []
        self.close_codes: list[int | None] = []
        self.errors: list[BaseException] = []
        self._server: Server | None = None
        self.url = ""

    @property
    def connections(self) -> int:
        return len(self.hellos)

    async def start(self) -> None:
        self._server = await serve(self._handle, "127.0.0.1", 0, compression=None)
        port = next(iter(self._server.sockets)).getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}/ws"

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        assert not self.errors, self.errors

    async def _handle(self, ws: ServerConnection) -> None:
        index = len(self.hellos)
        script = self.scripts[min(index, len(self.scripts) - 1)]
        try:
            self.hellos.append(orjson.loads(await ws.recv()))
            await script(Conn(ws, self, index))
        except ConnectionClosed:
            pass
        except Exception as exc:
            self.errors.append(exc)
        finally:
            await ws.wait_closed()
            self.close_codes.append(ws.close_code)


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[..., Awaitable[ScriptedServer]]]:
    servers: list[ScriptedServer] = []

    async def start(*scripts: Script) -> ScriptedServer:
        server = ScriptedServer(scripts)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


def fast(url: str, token: Any = "tok", **kwargs: Any) -> PushClient:
    kwargs.setdefault("backoff_base", 0.01)
    kwargs.setdefault("backoff_cap", 0.05)
    return PushClient(url, token, "dev-1", **kwargs)


async def welcome_and_drain(c: Conn) -> None:
    await c.welcome()
    await c.drain()


def client_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("pushsvc-client")]


# --- scripted: handshake, messages, acks ----------------------------------------------------------


async def test_hello_welcome_states_and_clean_close(scripted: Any) -> None:
    server = await scripted(welcome_and_drain)
    states: list[State] = []
    client = fast(server.url, resume={"user:p1": "5-0"}, on_state=states.append)
    async with client:
        welcome = await client.wait_open(UNIT)
        assert (welcome.session, client.session, client.node) == ("s0", "s0", "n1")
        assert client.state is State.OPEN
    assert server.hellos == [
        {"type": "hello", "token": "tok", "device": "dev-1", "resume": {"user:p1": "5-0"}}
    ]
    assert states == [State.CONNECTING, State.OPEN, State.CLOSED]
    await eventually(lambda: server.close_codes == [1000])
    assert client_tasks() == []


async def test_messages_are_yielded_in_order_and_acked_once_handed_over(scripted: Any) -> None:
    handed_over = asyncio.Event()

    async def script(c: Conn) -> None:
        await c.welcome()
        await c.msg("m1", "1-0")
        await c.msg("m2", "2-0", ack=False)
        await c.msg("m3", "3-0")
        await asyncio.sleep(0.3)  # six ack intervals: nothing may be acked before hand-over
        assert server.acked == []
        handed_over.set()
        await c.acked("m1", "m3")
        await c.drain()

    server = await scripted(script)
    async with fast(server.url) as client:
        await client.wait_open(UNIT)
        await handed_over.wait()
        got = [await client.receive(UNIT) for _ in range(3)]
        assert [(m.id, m.offset, m.ack, m.replay) for m in got] == [
            ("m1", "1-0", True, False),
            ("m2", "2-0", False, False),
            ("m3", "3-0", True, False),
        ]
        assert got[0].data == {"n": "m1"}
        assert got[0].event == "queue.called"
        await eventually(lambda: sorted(server.acked) == ["m1", "m3"])
        assert client.offsets == {"user:p1": "3-0"}


async def test_acks_go_in_batches_of_at_most_one_hundred(scripted: Any) -> None:
    ids = [f"m{i}" for i in range(250)]

    async def script(c: Conn) -> None:
        await c.welcome()
        for i, msg_id in enumerate(ids):
            await c.msg(msg_id, f"1-{i}")
        await c.drain()

    server = await scripted(script)
    async with fast(server.url) as client:
        got = [(await client.receive(UNIT)).id for _ in ids]
        assert got == ids
        await eventually(lambda: len(server.acked) == 250)
    acks = [f["ids"] for f in server.frames if f["type"] == "ack"]
    assert sorted(server.acked) == sorted(ids)
    assert all(1 <= len(batch) <= 100 for batch in acks)


async def test_duplicates_are_not_yielded_but_are_acked_again(scripted: Any) -> None:
    async def script(c: Conn) -> None:
        await c.welcome()
        await c.msg("m1", "1-0")
        await c.acked("m1")
        await c.msg("m1", "1-0")  # as if the first ack got lost
        await c.acked("m1")
        await c.msg("m2", "2-0")
        await c.drain()

    server = await scripted(script)
    async with fast(server.url) as client:
        assert (await client.receive(UNIT)).id == "m1"
        assert (await client.receive(2 * UNIT)).id == "m2"
        with pytest.raises(TimeoutError):
            await client.receive(0.2 * UNIT)
        assert client.duplicates == 1
        await eventually(lambda: server.acked.count("m2") == 1)
    assert server.acked.count("m1") == 2


async def test_manual_ack_one_at_a_time_still_goes_in_batches(scripted: Any) -> None:
    ids = [f"m{i}" for i in range(50)]

    async def script(c: Conn) -> None:
        await c.welcome()
        for i, msg_id in enumerate(ids):
            await c.msg(msg_id, f"1-{i}")
        await c.drain()

    server = await scripted(script)
    async with fast(server.url, auto_ack=False) as client:
        first = await client.receive(UNIT)
        await asyncio.sleep(0.2)
        assert server.acked == []
        await client.ack([first.id])
        for _ in ids[1:]:
            await client.ack([(await client.receive(UNIT)).id])
        await eventually(lambda: len(server.acked) == len(ids))
    assert server.acked == ids
    assert len([f for f in server.frames if f["type"] == "ack"]) <= 5


async def test_close_flushes_pending_acks_and_is_idempotent(scripted: Any) -> None:
    async def script(c: Conn) -> None:
        await c.welcome()
        await c.msg("m1")
        await c.drain()

    server = await scripted(script)
    client = fast(server.url, ack_interval=60)
    await client.start()
    await client.start()
    assert (await client.receive(UNIT)).id == "m1"
    await client.close()
    await client.close()
    assert server.acked == ["m1"]
    assert client.state is State.CLOSED
    assert [m async for m in client] == []
    with pytest.raises(ClientClosed):
        await client.receive(UNIT)
    with pytest.raises(ClientClosed):
        await client.wait_open(UNIT)
    with pytest.raises(ClientClosed):
        await client.start()
    assert client_tasks() == []


async def test_close_wakes_a_waiting_consumer_and_concurrent_closers(scripted: Any) -> None:
    server = await scripted(welcome_and_drain)
    client = fast(server.url)
    await client.start()
    await client.wait_open(UNIT)
    consumer = asyncio.create_task(anext(client, None))
    await asyncio.sleep(0.05)
    await asyncio.gather(client.close(), client.close())
    assert client_tasks() == []
    assert await asyncio.wait_for(consumer, UNIT) is None


async def test_slow_consumer_gets_everything_in_order(scripted: Any) -> None:
    ids = [f"m{i}" for i in range(20)]

    async def script(c: Conn) -> None:
        await c.welcome()
        for i, msg_id in enumerate(ids):
            await c.msg(msg_id, f"1-{i}")
        await c.drain()

    server = await scripted(script)
    async with fast(server.url, max_queue=2) as client:
        await client.wait_open(UNIT)
        await asyncio.sleep(0.1)
        got = []
        async for msg in client:
            got.append(msg.id)
            if len(got) == len(ids):
                break
        assert got == ids


async def test_unknown_and_malformed_frames_are_ignored(scripted: Any) -> None:
    async def script(c: Conn) -> None:
        await c.welcome()
        await c.send({"type": "from-the-future", "x": 1})
        await c.ws.send("not json")
        await c.send({"type": "msg", "id": "broken"})
        await c.msg("m1")
        await c.drain()

    server = await scripted(script)
    async with fast(server.url) as client:
        assert (await client.receive(UNIT)).id == "m1"
        assert client.connections == 1
    assert server.connections == 1


# --- scripted: pings -----------------------------------------------------------------------------


async def test_server_ping_is_answered_with_pong(scripted: Any) -> None:
    async def script(c: Conn) -> None:
        await c.welcome()
        await c.send({"type": "ping"})
        await c.read_until(lambda f: f["type"] == "pong")
        await c.msg("pong-seen")
        await c.drain()

    server = await scripted(script)
    async with fast(server.url) as client:
        assert (await client.receive(2 * UNIT)).id == "pong-seen"


async def test_client_ping_measures_the_round_trip(scripted: Any) -> None:
    server = await scripted(welcome_and_drain)
    async with fast(server.url) as client:
        await client.wait_open(UNIT)
        rtt = await client.ping(UNIT)
        assert 0 <= rtt < UNIT
    assert {"type": "ping"} in server.frames


async def test_a_silent_server_is_left_and_reconnected(scripted: Any) -> None:
    async def silent(c: Conn) -> None:
        await c.welcome(heartbeat=0.2)  # the client gives up after max(2.5 x 0.2, 1) s
        await c.ws.wait_closed()  # say nothing until the client leaves

    server = await scripted(silent, welcome_and_drain)
    async with fast(server.url) as client:
        await eventually(lambda: client.connections == 2, 4 * UNIT)
        assert client.last_close is not None
        assert client.last_close[0] == 1006


async def test_no_welcome_in_time_means_retry(scripted: Any) -> None:
    async def mute(c: Conn) -> None:
        await c.drain()

    server = await scripted(mute, welcome_and_drain)
    async with fast(server.url, open_timeout=0.3) as client:
        with pytest.raises(TimeoutError):
            await client.wait_open(0.1)
        await client.wait_open(3 * UNIT)
        assert server.connections == 2


# --- scripted: reconnect and resume --------------------------------------------------------------


async def test_reconnect_resumes_from_the_last_offsets_handed_over(scripted: Any) -> None:
    async def first(c: Conn) -> None:
        await c.welcome()
        await c.msg("m1", "10-0", "user:p1")
        await c.msg("m2", "3-0", "topic:clinic-205")
        await c.msg("m0", "9-5", "user:p1")  # older offset: must not move the stream back
        await c.acked("m1", "m2", "m0")
        await c.close(4011, "deliveries not acknowledged")

    async def second(c: Conn) -> None:
        await c.welcome()
        await c.msg("m3", "11-0", "user:p1")
        await c.drain()

    server = await scripted(first, second)
    states: list[State] = []
    async with fast(server.url, on_state=states.append) as client:
        got = [(await client.receive(2 * UNIT)).id for _ in range(4)]
        assert got == ["m1", "m2", "m0", "m3"]
        assert client.session == "s1"
        assert client.last_close == (4011, "deliveries not acknowledged")
    assert server.hellos[1]["resume"] == {"user:p1": "10-0", "topic:clinic-205": "3-0"}
    assert states == [State.CONNECTING, State.OPEN, State.RECONNECTING, State.OPEN, State.CLOSED]


@pytest.mark.parametrize("code", [1001, 1011, 4003, 4004, 4008, 4009, 4011])
async def test_reconnectable_close_codes(scripted: Any, code: int) -> None:
    async def first(c: Conn) -> None:
        await c.welcome()
        await c.close(code, "bye")

    server = await scripted(first, welcome_and_drain)
    async with fast(server.url) as client:
        await eventually(lambda: client.connections == 2)
        assert client.last_close == (code, "bye")
        assert client.failure is None


async def test_token_provider_is_called_for_every_connection(scripted: Any) -> None:
    tokens = iter(["t1", "t2", "t3"])

    async def token() -> str:
        return next(tokens)

    async def first(c: Conn) -> None:
        await c.welcome()
        await c.close(1011)

    server = await scripted(first, welcome_and_drain)
    async with fast(server.url, token) as client:
        await eventually(lambda: client.connections == 2)
    assert [h["token"] for h in server.hellos] == ["t1", "t2"]


async def test_a_failing_token_provider_is_retried(scripted: Any) -> None:
    calls = 0

    async def token() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("token service unavailable")
        return f"t{calls}"

    server = await scripted(welcome_and_drain)
    async with fast(server.url, token) as client:
        await client.wait_open(UNIT)
    assert [h["token"] for h in server.hellos] == ["t2"]


async def test_misuse_before_start_and_before_open(scripted: Any) -> None:
    server = await scripted(welcome_and_drain)
    client = fast(server.url)
    with pytest.raises(ClientError):
        await client.receive(UNIT)
    with pytest.raises(NotConnected):
        await client.ping(UNIT)
    await client.close()


async def test_reconnect_now_drops_and_resumes_at_once(scripted: Any) -> None:
    async def first(c: Conn) -> None:
        await c.welcome()
        await c.msg("m1", "4-0")
        await c.drain()

    server = await scripted(first, welcome_and_drain)
    async with fast(server.url, backoff_base=30, backoff_cap=30) as client:
        assert (await client.receive(UNIT)).id == "m1"
        await client.reconnect_now()
        await eventually(lambda: client.connections == 2, UNIT)
    assert server.close_codes[0] == 1000
    assert server.hellos[1]["resume"] == {"user:p1": "4-0"}
    assert server.acked == ["m1"]


@pytest.mark.parametrize(
    ("code", "cls", "before_welcome"),
    [
        (4001, Unauthorized, True),
        (4002, ConnectionEnded, True),
        (4010, ClosedByOperator, False),
    ],
)
async def test_terminal_close_codes_end_the_client(
    scripted: Any, code: int, cls: type[ConnectionEnded], before_welcome: bool
) -> None:
    async def script(c: Conn) -> None:
        if not before_welcome:
            await c.welcome()
            await c.msg("m1")
        await c.send({"type": "error", "code": "slug", "message": "because"})
        await c.close(code, "reason")

    server = await scripted(script)
    async with fast(server.url) as client:
        if not before_welcome:
            assert (await client.receive(UNIT)).id == "m1"
        with pytest.raises(cls) as info:
            await client.receive(UNIT)
        assert (info.value.code, info.value.reason) == (code, "reason")
        assert info.value.error is not None
        assert info.value.error.code == "slug"
        assert client.failure is info.value
        assert client.state is State.CLOSED
        with pytest.raises(cls):
            await client.wait_open(UNIT)
        with pytest.raises(cls):
            await client.receive(UNIT)
        await asyncio.sleep(0.2)
    assert server.connections == 1


async def test_no_reconnect_when_disabled(scripted: Any) -> None:
    async def script(c: Conn) -> None:
        await c.welcome()
        await c.msg("m1")
        await c.close(1001, "draining")

    server = await scripted(script)
    async with fast(server.url, reconnect=False) as client:
        assert (await client.receive(UNIT)).id == "m1"
        with pytest.raises(ConnectionLost) as info:
            await client.receive(UNIT)
        assert (info.value.code, info.value.reason) == (1001, "draining")
    assert server.connections == 1


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_unreachable_server_gives_up_after_max_reconnects() -> None:
    states: list[State] = []
    url = f"ws://127.0.0.1:{_closed_port()}/ws"
    async with fast(url, max_reconnects=3, on_state=states.append) as client:
        with pytest.raises(ConnectionLost) as info:
            await client.wait_open(3 * UNIT)
        assert info.value.code == 1006
    assert states == [State.CONNECTING, State.RECONNECTING, State.CLOSED]


# --- a real node ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def node() -> Iterator[NodeHandle]:
    with start_node() as handle:
        yield handle


def _publish(node: NodeHandle, user: str) -> str:
    body = {"to": {"users": [user]}, "event": "queue.called", "data": {"clinic": "205"}}
    return str(node.publish(body)["id"])


async def _trail(node: NodeHandle, msg_id: str) -> dict[str, Any]:
    return await asyncio.to_thread(node.trail, msg_id)


async def _publish_async(node: NodeHandle, user: str) -> str:
    return await asyncio.to_thread(_publish, node, user)


async def _until_acked(node: NodeHandle, msg_id: str) -> dict[str, Any]:
    """The delivery trail, once some device of it has ``acked_at`` set."""
    deadline = time.monotonic() + 5 * UNIT
    while True:
        trail = await _trail(node, msg_id)
        if any(d.get("acked_at") for d in trail.get("devices", [])):
            return trail
        assert time.monotonic() < deadline, trail
        await asyncio.sleep(0.05)


async def test_node_delivers_and_records_the_auto_ack(node: NodeHandle) -> None:
    token = node.token("live-p1")
    async with PushClient(node.client_url, token, "phone-1") as client:
        welcome = await client.wait_open(5 * UNIT)
        assert welcome.user == "live-p1"
        msg_id = await _publish_async(node, "live-p1")
        msg = await client.receive(5 * UNIT)
        assert (msg.id, msg.stream, msg.event, msg.data) == (
            msg_id,
            "user:live-p1",
            "queue.called",
            {"clinic": "205"},
        )
        assert msg.ack is True
        assert msg.replay is False

        trail = await _until_acked(node, msg_id)
        device = next(d for d in trail["devices"] if d.get("acked_at"))
        assert device["session"] == client.session
        assert client.offsets == {"user:live-p1": msg.offset}


async def test_node_resume_after_a_dropped_connection(node: NodeHandle) -> None:
    token = node.token("live-p2")
    async with PushClient(node.client_url, token, "phone-2", backoff_base=0.05) as client:
        await client.wait_open(5 * UNIT)
        first = await _publish_async(node, "live-p2")
        assert (await client.receive(5 * UNIT)).id == first
        await client.reconnect_now()
        await eventually(lambda: client.connections == 2 and client.state is State.OPEN)
        second = await _publish_async(node, "live-p2")
        assert (await client.receive(5 * UNIT)).id == second
        with pytest.raises(TimeoutError):  # the first one is not yielded again
            await client.receive(0.3 * UNIT)
        offsets = client.offsets

    # Offline: a new client picks up what was published meanwhile, from the offsets kept above.
    missed = [await _publish_async(node, "live-p2") for _ in range(3)]
    async with PushClient(node.client_url, token, "phone-2", resume=offsets) as client:
        got = [await client.receive(5 * UNIT) for _ in missed]
        assert [m.id for m in got] == missed
        assert all(m.replay for m in got)
        with pytest.raises(TimeoutError):
            await client.receive(0.3 * UNIT)


async def test_node_redelivers_an_unacked_message_and_the_client_dedupes_it(
    node: NodeHandle,
) -> None:
    token = node.token("live-p3")
    async with PushClient(node.client_url, token, "phone-3", auto_ack=False) as client:
        await client.wait_open(5 * UNIT)
        first = await _publish_async(node, "live-p3")
        assert (await client.receive(5 * UNIT)).id == first
        await client.reconnect_now()  # unacked: the node owes it to this device again
        await eventually(lambda: client.duplicates >= 1, 5 * UNIT)
        second = await _publish_async(node, "live-p3")
        msg = await client.receive(5 * UNIT)
        assert msg.id == second
        await client.ack([first, second])
        for msg_id in (first, second):
            await _until_acked(node, msg_id)


async def test_node_operator_close_ends_the_client(node: NodeHandle) -> None:
    token = node.token("live-p4")
    async with PushClient(node.client_url, token, "phone-4", backoff_base=0.01) as client:
        await client.wait_open(5 * UNIT)

        response = await asyncio.to_thread(node.api, "DELETE", f"/v1/sessions/{client.session}")
        assert response.status_code in (200, 202, 204), response.text
        with pytest.raises(ClosedByOperator) as info:
            await client.receive(5 * UNIT)
        assert info.value.code == 4010
        await asyncio.sleep(0.2)
        assert client.connections == 1


async def test_node_rejects_a_bad_token(node: NodeHandle) -> None:
    async with PushClient(node.client_url, "not-a-token", "phone-5") as client:
        with pytest.raises(Unauthorized) as info:
            await client.wait_open(5 * UNIT)
        assert info.value.code == 4001
        assert client.connections == 0


@pytest.fixture(scope="module")
def quick_heartbeat_node() -> Iterator[NodeHandle]:
    with start_node(heartbeat=0.3) as handle:
        yield handle


async def test_node_heartbeat_pings_are_answered(quick_heartbeat_node: NodeHandle) -> None:
    node = quick_heartbeat_node
    async with PushClient(node.client_url, node.token("live-p6"), "phone-6") as client:
        welcome = await client.wait_open(5 * UNIT)
        assert welcome.heartbeat == pytest.approx(0.3)
        await asyncio.sleep(2 * UNIT)  # several pings, each answered, or the node closes 4009
        assert (client.connections, client.state, client.last_close) == (1, State.OPEN, None)
        assert 0 <= await client.ping(UNIT) < UNIT


# --- token lifetime against a real node ----------------------------------------------------------


def test_refresh_delay_is_a_minute_before_exp_or_at_80_percent_of_a_short_lifetime() -> None:
    assert refresh_delay(1000.0, 1000.0, 4600.0) == 3540.0  # an hour: a minute before
    assert refresh_delay(1000.0, 1000.0, 1010.0) == 8.0  # 10 s: at 80%
    assert refresh_delay(1000.0, None, 1010.0) == 8.0  # no iat: the lifetime from now
    assert refresh_delay(1000.0, 900.0, 999.0) == 0.0  # already due


async def test_node_session_is_refreshed_through_the_provider_past_its_first_exp(
    node: NodeHandle,
) -> None:
    minted: list[str] = []

    async def provider() -> str:
        minted.append(await asyncio.to_thread(node.token, "live-r1", (), 2))
        return minted[-1]

    async with PushClient(node.client_url, provider, "phone-r1") as client:
        await client.wait_open(5 * UNIT)
        await asyncio.sleep(4)  # two lifetimes of the first token
        assert len(minted) >= 3 and client.connections == 1 and client.state is State.OPEN
        msg_id = await _publish_async(node, "live-r1")
        assert (await client.receive(5 * UNIT)).id == msg_id


async def test_node_token_expired_reconnects_with_a_new_token_from_the_provider(
    node: NodeHandle,
) -> None:
    calls = 0

    async def provider() -> str:  # the refresh fails: the session expires
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("identity provider down")
        return await asyncio.to_thread(node.token, "live-r2", (), 2 if calls == 1 else 60)

    async with PushClient(node.client_url, provider, "phone-r2") as client:
        await client.wait_open(5 * UNIT)
        await eventually(lambda: client.connections == 2, 6 * UNIT)
        assert client.last_error is not None and client.last_error.code == "token_expired"
        assert client.failure is None
        msg_id = await _publish_async(node, "live-r2")
        assert (await client.receive(5 * UNIT)).id == msg_id


async def test_node_token_expired_ends_a_client_with_a_fixed_token(node: NodeHandle) -> None:
    token = await asyncio.to_thread(node.token, "live-r3", (), 1)
    async with PushClient(node.client_url, token, "phone-r3") as client:
        await client.wait_open(5 * UNIT)
        with pytest.raises(Unauthorized) as info:
            await client.receive(5 * UNIT)
        assert info.value.code == 4001 and info.value.error is not None
        assert info.value.error.code == "token_expired" and client.connections == 1
