"""The load client's Socket.IO connection (``bench.sioconn``): bytes in, packets out, no sockets.

A server's bytes are fed to a :class:`SioConn` on a transport that records what is written; the
client's masked frames are unmasked and checked.
"""

from __future__ import annotations

import asyncio

import orjson
import pytest

from bench import wsproto
from bench.common import BROADCAST_EVENT, USER_EVENT, Setup
from bench.sioconn import SioConn
from bench.wsconn import HELLO, OPEN, HandshakeFailed
from bench.wsload import Worker

RUN = "r1"


class Recorder:
    """Enough of an ``asyncio.Transport`` for a connection: it keeps what is written."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True


def worker() -> Worker:
    setup = Setup(
        worker=0,
        run=RUN,
        url="ws://127.0.0.1:9/socket.io/?EIO=4&transport=websocket",
        source_ip="127.0.0.2",
        first=10,
        count=2,
        concurrency=1,
        connect_timeout=1.0,
        deadline=60.0,
        cpus=[],
        user_prefix="u",
        device_prefix="d",
        token_ttl=60,
        topics=[],
        protocol="socketio",
    )
    return Worker(setup)


def server_text(payload: bytes) -> bytes:
    """An unmasked text frame, as a server sends it."""
    assert len(payload) < 126
    return bytes([0x80 | wsproto.OP_TEXT, len(payload)]) + payload


def client_text(frame: bytes) -> bytes:
    """The payload of one masked client text frame."""
    assert frame[0] == 0x80 | wsproto.OP_TEXT
    n = frame[1] & 0x7F
    assert n < 126
    return wsproto.mask_payload(frame[6 : 6 + n], frame[2:6])


def upgraded(w: Worker, slot: int) -> tuple[SioConn, Recorder, asyncio.Future[None]]:
    welcomed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    conn = SioConn(w, slot, welcomed)
    transport = Recorder()
    conn.connection_made(transport)  # type: ignore[arg-type]
    accept = wsproto.accept_for(conn.key).decode()
    head = f"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    transport.written.clear()
    conn.data_received(head.encode())
    assert conn.state == HELLO
    return conn, transport, welcomed


def event(kind: str, seq: int) -> bytes:
    msg = {"type": "msg", "event": kind, "id": f"{kind}-{seq}", "data": {"seq": seq, "run": RUN}}
    return b"42" + orjson.dumps(["msg", msg])


async def test_connects_naming_its_user_answers_pings_and_counts_events() -> None:
    w = worker()
    conn, transport, welcomed = upgraded(w, 1)
    conn.data_received(server_text(b'0{"sid":"e1","pingInterval":25000}'))
    assert [client_text(f) for f in transport.written] == [b'40{"user":"u11"}']
    conn.data_received(server_text(b'40{"sid":"s1"}'))
    assert conn.state == OPEN
    assert welcomed.done()
    transport.written.clear()
    conn.data_received(server_text(b"2"))
    assert [client_text(f) for f in transport.written] == [b"3"]
    assert w.pings_answered == 1
    conn.data_received(server_text(event(BROADCAST_EVENT, 1)))
    conn.data_received(server_text(event(BROADCAST_EVENT, 1)))  # the fast path, a duplicate
    conn.data_received(server_text(event(USER_EVENT, 7)))
    assert w.bcast_count[1] == 1
    assert w.bcast_dups[1] == 1
    assert [seq for seq, _ in w.user_arrivals] == [7]
    conn.data_received(server_text(b'42["other",{}]'))
    assert w.unexpected_frames == 1
    assert w.foreign_messages == 0


async def test_a_connect_error_fails_the_handshake() -> None:
    w = worker()
    conn, _, welcomed = upgraded(w, 0)
    conn.data_received(server_text(b'0{"sid":"e1"}'))
    conn.data_received(server_text(b'44{"message":"no user"}'))
    with pytest.raises(HandshakeFailed, match="connect_error"):
        await welcomed
