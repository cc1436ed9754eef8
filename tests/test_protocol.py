"""The wire protocol against a real node process, with real WebSocket clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
from websockets.exceptions import InvalidStatus

from tests.support import UNIT, NodeHandle, RedisServer, start_node, wait_until
from tests.wire import Wire


@pytest.fixture(scope="module")
def node() -> Iterator[NodeHandle]:
    with start_node(
        hello_timeout=0.5 * UNIT, ack_timeout=0.4 * UNIT, max_attempts=3, heartbeat=30,
        max_frame_size=4096, outbox_cap=4096, outbox_grace=0.2, client_frame_rate=50,
        client_frame_burst=100,
    ) as handle:  # fmt: skip
        yield handle


def uid(prefix: str = "p") -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def to_user(user: str, event: str = "queue.called", **data: Any) -> dict[str, Any]:
    return {"to": {"users": [user]}, "event": event, "data": data}


# -- delivery and isolation -------------------------------------------------------------------


async def test_two_tabs_of_one_patient_both_receive_and_both_acks_show(node: NodeHandle) -> None:
    user = uid()
    tab1 = await Wire.open(node.client_url, node.token(user), device="phone")
    tab2 = await Wire.open(node.client_url, node.token(user), device="laptop")
    assert tab1.welcome["user"] == user and tab1.welcome["session"] != tab2.welcome["session"]
    published = node.publish(to_user(user, clinic="205", room="205", position=1))
    m1, m2 = await tab1.recv_msg(), await tab2.recv_msg()
    for m in (m1, m2):
        assert m["id"] == published["id"]
        assert m["stream"] == f"user:{user}" and m["offset"] == published["streams"][f"user:{user}"]
        assert m["data"] == {"clinic": "205", "room": "205", "position": 1}
        assert m["ack"] is True and m["replay"] is False
    assert published["online_sessions"] == 2
    await tab1.ack(m1["id"])
    await tab2.ack(m2["id"])
    trail = wait_until(lambda: (t := node.trail(m1["id"]))["state"] == "acked" and t)
    devices = {d["device"]: d for d in trail["devices"]}
    assert set(devices) == {"phone", "laptop"}
    assert all(d["acked_at"] >= d["sent_at"] and d["attempts"] == 1 for d in devices.values())
    await tab1.close()
    await tab2.close()


async def test_a_patient_never_receives_another_patients_messages(node: NodeHandle) -> None:
    alice, bob = uid("alice"), uid("bob")
    a = await Wire.open(node.client_url, node.token(alice))
    node.publish(to_user(bob, "lab.ready", test="glucose"))
    node.publish({"to": {"topics": ["secret-clinic"]}, "event": "queue.position", "data": {}})
    await a.silent(0.4 * UNIT)
    mine = node.publish(to_user(alice, "rx.ready", window=2))
    assert (await a.recv_msg())["id"] == mine["id"]
    # a forged resume of bob's stream replays nothing of bob's
    a2 = await Wire.open(node.client_url, node.token(alice), resume={f"user:{bob}": "0-0"})
    assert a2.welcome["replayed"] == 1  # alice's own unacked message only
    assert (await a2.recv_msg())["stream"] == f"user:{alice}"
    await a2.silent()
    await a.close()
    await a2.close()


async def test_topics_reach_only_tokens_that_list_them(node: NodeHandle) -> None:
    topic = uid("clinic")
    board = await Wire.open(node.client_url, node.token(uid(), [topic]))
    other = await Wire.open(node.client_url, node.token(uid(), ["another-clinic"]))
    result = node.publish({"to": {"topics": [topic]}, "event": "queue.position", "data": {"n": 3}})
    got = await board.recv_msg()
    assert got["id"] == result["id"] and got["stream"] == f"topic:{topic}"
    assert got["ack"] is False  # topics default to no ack
    await other.silent()
    everyone = node.publish({"to": {"all": True}, "event": "notice", "data": "closing at 18:00"})
    for client in (board, other):
        m = await client.recv_msg()
        assert (
            m["id"] == everyone["id"] and m["stream"] == "all" and m["data"] == "closing at 18:00"
        )
    await board.close()
    await other.close()


async def test_resume_replays_exactly_the_missed_messages_then_live(node: NodeHandle) -> None:
    user, topic = uid(), uid("board")
    token = node.token(user, [topic])
    first = await Wire.open(node.client_url, token, device="d")
    seen = []
    for i in range(3):
        node.publish(to_user(user, n=i))
        seen.append(await first.recv_msg())
    node.publish({"to": {"topics": [topic]}, "event": "queue.position", "data": {"n": 0}})
    topic_msg = await first.recv_msg()
    while topic_msg["event"] != "queue.position":  # under load, a redelivery may come first
        assert topic_msg["id"] in {m["id"] for m in seen}, topic_msg
        topic_msg = await first.recv_msg()
    await first.ack(*(m["id"] for m in seen))
    wait_until(lambda: node.trail(seen[-1]["id"])["state"] == "acked")
    await first.close()
    missed = [node.publish(to_user(user, n=i)) for i in range(3, 6)]
    missed_topic = node.publish(
        {"to": {"topics": [topic]}, "event": "queue.position", "data": {"n": 1}}
    )
    resume = {f"user:{user}": seen[-1]["offset"], f"topic:{topic}": topic_msg["offset"]}
    again = await Wire.open(node.client_url, token, device="d", resume=resume)
    assert again.welcome["replayed"] == 4
    replayed = await again.messages(4)
    assert all(m["replay"] for m in replayed)
    assert [m["id"] for m in replayed] == [m["id"] for m in missed] + [missed_topic["id"]]
    live = node.publish(to_user(user, n=6))
    got = await again.recv_msg()
    assert got["id"] == live["id"] and got["replay"] is False
    await again.silent()
    await again.close()


async def test_offline_inbox_delivers_unacked_messages_when_a_device_connects(
    node: NodeHandle,
) -> None:
    user = uid()
    waiting = [node.publish(to_user(user, "rx.ready", window=i)) for i in range(2)]
    node.publish({**to_user(user, "fyi"), "ack": False})  # fire-and-forget: not in the inbox
    node.publish({**to_user(user, "stale"), "ttl": 1})
    await asyncio.sleep(1.1)
    phone = await Wire.open(node.client_url, node.token(user), device="phone")
    assert phone.welcome["replayed"] == 2
    got = await phone.messages(2)
    assert [m["id"] for m in got] == [w["id"] for w in waiting]
    assert all(m["replay"] and m["ack"] for m in got)
    await phone.ack(*(m["id"] for m in got))
    wait_until(lambda: node.trail(got[1]["id"])["state"] == "acked")
    await phone.close()
    # the same device again: nothing owed; another device of the patient still gets its inbox
    phone = await Wire.open(node.client_url, node.token(user), device="phone")
    assert phone.welcome["replayed"] == 0
    tablet = await Wire.open(node.client_url, node.token(user), device="tablet")
    assert tablet.welcome["replayed"] == 2
    await phone.close()
    await tablet.close()


async def test_unacked_messages_are_redelivered_then_the_session_is_closed_4011(
    node: NodeHandle,
) -> None:
    user = uid()
    client = await Wire.open(node.client_url, node.token(user), device="slow")
    published = node.publish(to_user(user, "lab.ready", test="x"))
    code, _, frames = await client.closed(timeout=5 * UNIT)
    msgs = [f for f in frames if f["type"] == "msg"]
    assert [m["id"] for m in msgs] == [published["id"]] * 3  # max_attempts writes
    assert frames[-1] == {
        "type": "error",
        "code": "not_acknowledged",
        "message": "deliveries were not acknowledged",
    }
    assert code == 4011
    trail = wait_until(lambda: (t := node.trail(published["id"]))["devices"] and t)
    assert trail["devices"][0]["attempts"] == 3 and trail["state"] == "delivered"
    # it is still owed to the device: the next connection gets it, and acking settles it
    back = await Wire.open(node.client_url, node.token(user), device="slow")
    m = await back.recv_msg()
    assert m["id"] == published["id"] and m["replay"] is True
    await back.ack(m["id"])
    wait_until(lambda: node.trail(published["id"])["state"] == "acked")
    await back.close()


async def test_idempotent_publish_appends_once(node: NodeHandle) -> None:
    user = uid()
    body = {**to_user(user, "rx.ready", window=1), "idempotency_key": uid("key")}
    first, second = node.publish(body), node.publish(body)
    assert first["id"] == second["id"] and first["streams"] == second["streams"]
    assert second["duplicate"] is True and first["duplicate"] is False
    client = await Wire.open(node.client_url, node.token(user))
    assert client.welcome["replayed"] == 1
    await client.recv_msg()
    await client.silent()
    await client.close()


async def test_batch_publish_keeps_order(node: NodeHandle) -> None:
    user = uid()
    client = await Wire.open(node.client_url, node.token(user))
    r = node.api(
        "POST", "/v1/messages/batch", json={"messages": [to_user(user, n=i) for i in range(20)]}
    )
    assert r.status_code == 202
    ids = [x["id"] for x in r.json()["results"]]
    got = await client.messages(20)
    assert [m["id"] for m in got] == ids
    assert [m["data"]["n"] for m in got] == list(range(20))
    await client.close()


# -- close codes ------------------------------------------------------------------------------


def _forged(user: str) -> str:
    return jwt.encode(
        {"sub": user, "exp": int(time.time()) + 60}, "another-secret-" + "y" * 32, algorithm="HS256"
    )


@pytest.mark.parametrize(
    ("make_token", "slug"),
    [
        (lambda n: "garbage", "invalid_token"),
        (lambda n: _forged("p1"), "invalid_token"),
        (lambda n: jwt.encode({"sub": "p1", "exp": int(time.time()) - 10}, n.token_secret, algorithm="HS256"), "token_expired"),
        (lambda n: jwt.encode({"sub": "p1"}, n.token_secret, algorithm="HS256"), "invalid_token"),
        (lambda n: jwt.encode({"sub": "bad user", "exp": int(time.time()) + 60}, n.token_secret, algorithm="HS256"), "invalid_token"),
        (lambda n: jwt.encode({"sub": "p1", "exp": int(time.time()) + 60, "topics": "x"}, n.token_secret, algorithm="HS256"), "invalid_token"),
        (lambda n: jwt.encode({"sub": "p1", "exp": int(time.time()) + 60}, n.token_secret, algorithm="HS512"), "invalid_token"),
    ],
)  # fmt: skip
async def test_4001_bad_tokens(node: NodeHandle, make_token: Any, slug: str) -> None:
    client = await Wire.open(node.client_url, None)
    await client.send({"type": "hello", "token": make_token(node), "device": "d"})
    code, _, frames = await client.closed()
    assert code == 4001
    assert frames == [{"type": "error", "code": slug, "message": frames[0]["message"]}]


async def test_4002_no_hello_in_time(node: NodeHandle) -> None:
    client = await Wire.open(node.client_url, None)
    started = time.monotonic()
    code, _, frames = await client.closed()
    assert code == 4002 and frames[0]["code"] == "hello_timeout"
    assert time.monotonic() - started >= 0.4 * UNIT


@pytest.mark.parametrize(
    ("frame", "slug"),
    [
        ("not json at all", "malformed_json"),
        ('{"type":"ack","ids":["a"', "malformed_json"),
        ("[1,2,3]", "not_an_object"),
        ('"hello"', "not_an_object"),
        ("null", "not_an_object"),
        ('{"type":"subscribe","topic":"x"}', "unknown_frame_type"),
        ('{"type":"ack","ids":"nope"}', "invalid_frame"),
        ('{"type":"hello","token":"x"}', "duplicate_hello"),
        (b"\x00\x01binary", "binary_frame"),
        ('{"type":"hello","token":"t","resume":{"all":"yesterday"}}', "duplicate_hello"),
    ],
)
async def test_4003_protocol_errors_after_hello(
    node: NodeHandle, frame: str | bytes, slug: str
) -> None:
    client = await Wire.open(node.client_url, node.token(uid()))
    await client.send(frame)
    code, _, frames = await client.closed()
    assert code == 4003
    assert frames[-1]["type"] == "error" and frames[-1]["code"] == slug


@pytest.mark.parametrize(
    ("frame", "slug"),
    [
        ('{"type":"ack","ids":["x"]}', "hello_expected"),
        ("{}", "unknown_frame_type"),
    ],
)
async def test_4003_before_hello(node: NodeHandle, frame: str, slug: str) -> None:
    client = await Wire.open(node.client_url, None)
    await client.send(frame)
    code, _, frames = await client.closed()
    assert (code, frames[-1]["code"]) == (4003, slug)


@pytest.mark.parametrize(
    "offset", ["yesterday", "\u0663-0", "1-\u00b2", "\uff11-0", "1", "1-2-3", "-1", " 1-0", ""]
)
async def test_4003_bad_resume_offset(node: NodeHandle, offset: str) -> None:
    client = await Wire.open(node.client_url, None)
    await client.send({"type": "hello", "token": node.token(uid()), "resume": {"all": offset}})
    code, _, frames = await client.closed()
    assert (code, frames[-1]["type"], frames[-1]["code"]) == (4003, "error", "bad_resume")
    assert "Traceback" not in node.log()


@pytest.mark.parametrize("device", ["a b", "phone/1", "x" * 129, "\u00fc", "p1\n", "a\u0000b"])
async def test_4003_invalid_device(node: NodeHandle, device: str) -> None:
    client = await Wire.open(node.client_url, None)
    await client.send({"type": "hello", "token": node.token(uid()), "device": device})
    code, _, frames = await client.closed()
    assert (code, frames[-1]["type"], frames[-1]["code"]) in (
        (4003, "error", "invalid_device"),
        (4003, "error", "invalid_frame"),  # longer than any device id: refused by the decoder
    )
    assert frames[-1]["code"] == "invalid_device" or len(device) > 128


async def test_valid_device_ids_are_welcomed(node: NodeHandle) -> None:
    for device in ("phone-1", "a.b@c+d=e_f", "x" * 128):
        client = await Wire.open(node.client_url, node.token(uid()), device=device)
        assert client.welcome["type"] == "welcome"
        await client.close()


DEEP = ["[" * 100_000 + "]" * 100_000, '{"type":"ack","ids":["a"],"x":' + "[" * 3000 + "]" * 3000 + "}",
        "[" * 50_000, '{"type":"hello","token":"t","resume":' + '{"a":' * 3000 + "1" + "}" * 3001]  # fmt: skip


@pytest.fixture(scope="module")
def roomy() -> Iterator[NodeHandle]:
    """A node that accepts frames of a megabyte, to reach the decoder with anything."""
    with start_node(max_frame_size=1 << 20) as handle:
        yield handle


@pytest.mark.parametrize("frame", DEEP)
@pytest.mark.parametrize("hello", [False, True])
async def test_4003_frames_nested_too_deep_never_raise(
    roomy: NodeHandle, frame: str, hello: bool
) -> None:
    client = await Wire.open(roomy.client_url, roomy.token(uid()) if hello else None)
    await client.send(frame)
    code, _, frames = await client.closed()
    assert (code, frames[-1]["type"], frames[-1]["code"]) == (4003, "error", "nested_too_deep")
    again = await Wire.open(roomy.client_url, roomy.token(uid()))  # the node is fine
    await again.close()
    log = roomy.log()
    assert "Traceback" not in log and '"exc"' not in log and '"level":"error"' not in log


async def test_max_connections_counts_connections_that_have_not_said_hello(
    server: RedisServer,
) -> None:
    # on Redis: no embedded monitor, whose canary could take the slot a closed connection frees
    with start_node(max_connections=3, hello_timeout=30 * UNIT, redis_url=server.url) as small:
        silent: list[Wire] = []
        with pytest.raises(InvalidStatus) as refused:  # noqa: PT012 - the 3rd or 4th is refused
            while len(silent) < 4:
                silent.append(await Wire.open(small.client_url, None))
        assert 2 <= len(silent) <= 3
        assert refused.value.response.status_code == 503
        assert b'"unavailable"' in refused.value.response.body
        with pytest.raises(InvalidStatus):
            await Wire.open(small.client_url, small.token(uid()))
        await silent[0].close()
        admitted = await admitted_within(small, 15 * UNIT)
        for client in (*silent[1:], admitted):
            await client.close()


def test_one_address_holds_at_most_max_pending_connections_before_their_hello() -> None:
    with (
        start_node(max_pending_per_address=2, hello_timeout=30 * UNIT) as node,
        contextlib.ExitStack() as sockets,
    ):

        def upgrade(source: str) -> tuple[socket.socket, bytes]:
            s = socket.create_connection(("127.0.0.1", node.port), source_address=(source, 0))
            sockets.enter_context(s)
            s.settimeout(10 * UNIT)
            s.sendall(_UPGRADE)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            return s, data

        def hello(s: socket.socket, data: bytes) -> None:
            frame = {"type": "hello", "token": node.token(uid()), "device": "d"}
            s.sendall(_masked(json.dumps(frame).encode()))
            while b'"welcome"' not in data:
                chunk = s.recv(65536)
                assert chunk, data
                data += chunk

        first, second = upgrade("127.0.0.1"), upgrade("127.0.0.1")
        assert first[1].startswith(b"HTTP/1.1 101 ") and second[1].startswith(b"HTTP/1.1 101 ")
        third = upgrade("127.0.0.1")
        assert third[1].startswith(b"HTTP/1.1 429 "), third[1]
        assert b"Retry-After: 1\r\n" in third[1] and b'"too_many_pending"' in third[1]
        other = upgrade("127.0.0.2")  # another address has its own count
        assert other[1].startswith(b"HTTP/1.1 101 ")
        hello(*first)  # a hello accepted leaves the count
        fourth = upgrade("127.0.0.1")
        assert fourth[1].startswith(b"HTTP/1.1 101 ")
        assert upgrade("127.0.0.1")[1].startswith(b"HTTP/1.1 429 ")
        second[0].close()  # so does a connection that ends before its hello
        deadline = time.monotonic() + 10 * UNIT
        while not (again := upgrade("127.0.0.1"))[1].startswith(b"HTTP/1.1 101 "):
            assert time.monotonic() < deadline, again[1]
            time.sleep(0.05)


async def admitted_within(node: NodeHandle, timeout: float) -> Wire:
    """A welcomed client, retried while the node still counts a connection that is closing."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await Wire.open(node.client_url, node.token(uid()))
        except InvalidStatus:
            assert time.monotonic() < deadline, "never admitted"
            await asyncio.sleep(0.05)


async def test_frames_before_hello_are_rate_limited() -> None:
    rate, burst, sent = 40, 10, 50
    with start_node(client_frame_rate=rate, client_frame_burst=burst) as limited:
        client = await Wire.open(limited.client_url, None)
        started = time.monotonic()
        for _ in range(sent):
            await client.send({"type": "ping"})
        for _ in range(sent):
            assert (await client.recv())["type"] == "pong"
        assert time.monotonic() - started >= 0.9 * (sent - burst) / rate
        await client.send({"type": "hello", "token": limited.token(uid())})
        assert (await client.recv())["type"] == "welcome"
        await client.close()


async def test_4004_frame_too_large(node: NodeHandle) -> None:
    client = await Wire.open(node.client_url, node.token(uid()))
    await client.send('{"type":"ack","ids":["' + "x" * 5000 + '"]}')
    code, _, frames = await client.closed()
    assert code == 4004 and frames[-1]["code"] == "frame_too_large"


async def test_4009_heartbeat_timeout() -> None:
    with start_node(heartbeat=0.3 * UNIT) as quick:
        client = await Wire.open(quick.client_url, quick.token(uid()))
        code, _, frames = await client.closed()  # never answers the pings
        assert code == 4009
        assert [f["type"] for f in frames] == ["ping", "error"] and frames[-1][
            "code"
        ] == "heartbeat_timeout"
        # a client that answers stays connected
        user = uid()
        alive = await Wire.open(quick.client_url, quick.token(user))
        for _ in range(4):
            assert (await alive.recv())["type"] == "ping"
            await alive.send({"type": "pong"})
        sessions = quick.api("GET", "/v1/sessions", params={"user": user}).json()["sessions"]
        assert [s["id"] for s in sessions] == [alive.welcome["session"]]
        assert sessions[0]["rtt"] is not None
        await alive.close()


async def test_4010_closed_by_operator(node: NodeHandle) -> None:
    user = uid()
    client = await Wire.open(node.client_url, node.token(user))
    session = client.welcome["session"]
    listed = node.api("GET", "/v1/sessions", params={"user": user}).json()["sessions"]
    assert [s["id"] for s in listed] == [session] and listed[0]["node"] == node.node_id
    r = node.api("DELETE", f"/v1/sessions/{session}")
    assert r.status_code == 202 and r.json()["node"] == node.node_id
    code, _, frames = await client.closed()
    assert code == 4010 and frames[-1]["code"] == "closed_by_operator"
    assert node.api("DELETE", f"/v1/sessions/{session}").status_code == 404


async def test_1001_on_drain_and_client_listener_refuses_while_draining() -> None:
    with start_node(drain_timeout=5) as draining:
        client = await Wire.open(draining.client_url, draining.token(uid()))
        draining.proc.terminate()
        code, _, frames = await client.closed()
        assert code == 1001 and frames[-1]["code"] == "node_draining"
        assert draining.proc.wait(10 * UNIT) == 0
        assert '"session closed"' in draining.log() and '"code": 1001' in draining.log().replace(
            '"code":1001', '"code": 1001'
        )


_UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def _raw_ws(port: int) -> socket.socket:
    """A client that upgrades, says hello and then never reads."""
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(_UPGRADE)
    return s


def _masked(payload: bytes) -> bytes:
    mask = b"\x01\x02\x03\x04"
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    n = len(payload)
    header = (
        bytes([0x81, 0x80 | n]) if n < 126 else bytes([0x81, 0x80 | 126]) + n.to_bytes(2, "big")
    )
    return header + mask + body


async def test_4008_slow_consumer_is_closed_and_others_are_unaffected(node: NodeHandle) -> None:
    user, fine = uid("slow"), uid("fine")
    stuck = _raw_ws(node.port)
    stuck.sendall(_masked(f'{{"type":"hello","token":"{node.token(user)}"}}'.encode()))
    ok = await Wire.open(node.client_url, node.token(fine))

    def overflowed() -> bool:
        text = httpx.get(node.internal_url + "/metrics").text
        return re.search(r'pushsvc_connections_closed_total\{code="4008"\} [1-9]', text) is not None

    body = {**to_user(user, "bulk", blob="z" * 3000), "ack": False}
    for _ in range(40):
        r = node.api("POST", "/v1/messages/batch", json={"messages": [body] * 100})
        assert r.status_code == 202
        if overflowed():
            break
    wait_until(overflowed)
    assert not any(s["user"] == user for s in node.api("GET", "/v1/sessions").json()["sessions"])
    m = node.publish(to_user(fine, "rx.ready"))
    assert (await ok.recv_msg())["id"] == m["id"]
    stuck.close()
    await ok.close()


async def test_a_flooding_client_does_not_starve_others(node: NodeHandle) -> None:
    flooder = await Wire.open(node.client_url, node.token(uid("flood")))
    user = uid()
    calm = await Wire.open(node.client_url, node.token(user))

    async def flood() -> None:
        for _ in range(3000):
            await flooder.ws.send('{"type":"ping"}')

    task = asyncio.create_task(flood())
    latencies = []
    for i in range(5):
        started = time.monotonic()
        node.publish(to_user(user, n=i))
        await calm.recv_msg(timeout=2 * UNIT)
        latencies.append(time.monotonic() - started)
        await asyncio.sleep(0.05)
    task.cancel()
    assert max(latencies) < 1.0 * UNIT, latencies
    await calm.close()
    await flooder.ws.close()


# -- plain HTTP on the client listener --------------------------------------------------------


def test_client_listener_http(node: NodeHandle) -> None:
    base = node.http_url
    assert httpx.get(base + "/healthz").json() == {"status": "ok"}
    js = httpx.get(base + "/client/pushsvc.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert httpx.get(base + "/demo/").status_code == 200
    for bad in (
        "/demo/../../pyproject.toml",
        "/client/..%2f..%2fpyproject.toml",
        "/nope",
        "/demo/missing.js",
    ):
        r = httpx.get(base + bad)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", bad
    plain = httpx.get(base + "/ws")
    assert plain.status_code == 426 and plain.json()["error"]["code"] == "upgrade_required"
    # the demo API exists in dev mode only
    r = httpx.post(base + "/demo/api/token", json={"user": "p1"})
    assert r.status_code == 404


def test_demo_api_in_dev_mode() -> None:
    with start_node(dev=True) as dev:
        r = httpx.post(dev.http_url + "/demo/api/token", json={"user": "p1", "topics": ["c1"]})
        assert r.status_code == 200 and r.json()["user"] == "p1"
        r = httpx.post(dev.http_url + "/demo/api/publish", json=to_user("p1", "rx.ready", window=1))
        assert r.status_code == 202 and r.json()["id"]
        for body in (b"{", b'{"user":"not valid!"}', b"[]"):
            r = httpx.post(dev.http_url + "/demo/api/token", content=body)
            assert r.status_code == 422 and "error" in r.json()


async def test_an_ack_just_before_a_reconnect_is_not_redelivered(node: NodeHandle) -> None:
    user = uid()
    for _ in range(3):
        first = await Wire.open(node.client_url, node.token(user), device="quick")
        m = node.publish(to_user(user, "rx.ready"))
        got = await first.recv_msg()
        await first.ack(got["id"])
        await first.close()
        again = await Wire.open(node.client_url, node.token(user), device="quick",
                                resume={f"user:{user}": got["offset"]})  # fmt: skip
        assert again.welcome["replayed"] == 0, m
        await again.close()


async def test_invalid_utf8_is_a_protocol_error(node: NodeHandle) -> None:
    user = uid()
    raw = _raw_ws(node.port)
    raw.settimeout(5)
    raw.recv(4096)  # the 101
    raw.sendall(_masked(f'{{"type":"hello","token":"{node.token(user)}"}}'.encode()))
    raw.sendall(_masked(b'{"type":"ack","ids":["\xff\xfe"]}'))
    data = b""
    while b"\x88" not in data:  # until the close frame
        chunk = raw.recv(65536)
        if not chunk:
            break
        data += chunk
    raw.close()
    assert b"\x88" in data
    close = data[data.index(b"\x88") :]
    code = int.from_bytes(close[2:4], "big")
    assert code in (1007, 4003)  # the WebSocket layer's "invalid data" or our protocol error


def test_a_hello_sent_with_the_upgrade_request_is_welcomed(node: NodeHandle) -> None:
    """Bytes that arrive right behind the request head, in the same read, reach the session."""
    hello = _masked(f'{{"type":"hello","token":"{node.token(uid())}"}}'.encode())
    with socket.create_connection(("127.0.0.1", node.port)) as s:
        s.settimeout(5 * UNIT)
        s.sendall(_UPGRADE + hello)
        data = b""
        while b'"welcome"' not in data:
            chunk = s.recv(65536)
            assert chunk, data
            data += chunk
    assert data.startswith(b"HTTP/1.1 101 ")


def test_a_request_never_finished_is_dropped_at_the_hello_timeout(node: NodeHandle) -> None:
    with socket.create_connection(("127.0.0.1", node.port)) as s:
        s.settimeout(10 * UNIT)
        started = time.monotonic()
        s.sendall(_UPGRADE[:40])
        try:
            answer = s.recv(4096)
        except ConnectionResetError:  # aborted
            answer = b""
    assert answer == b""  # no answer at all
    assert time.monotonic() - started >= 0.4 * UNIT


async def test_4004_is_counted_under_its_code(node: NodeHandle) -> None:
    client = await Wire.open(node.client_url, node.token(uid()))
    await client.send('{"type":"ack","ids":["' + "x" * 5000 + '"]}')
    code, _, _ = await client.closed()
    assert code == 4004
    closed = re.compile(r'pushsvc_connections_closed_total\{code="4004"\} [1-9]')  # from 0
    wait_until(lambda: closed.search(httpx.get(node.internal_url + "/metrics").text))


async def test_replayed_fire_and_forget_messages_show_in_the_trail(node: NodeHandle) -> None:
    topic = uid("board")
    first = await Wire.open(node.client_url, node.token(uid(), [topic]))
    node.publish({"to": {"topics": [topic]}, "event": "queue.position", "data": {"n": 1}})
    seen = await first.recv_msg()
    await first.close()
    later = node.publish({"to": {"topics": [topic]}, "event": "queue.position", "data": {"n": 2}})
    again = await Wire.open(
        node.client_url, node.token(uid(), [topic]), resume={f"topic:{topic}": seen["offset"]}
    )
    assert (await again.recv_msg())["id"] == later["id"]
    wait_until(lambda: node.trail(later["id"])["state"] == "delivered")
    await again.close()
