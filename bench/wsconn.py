"""One load-client WebSocket connection: an asyncio protocol pumping ``bench.wsproto``.

It upgrades, sends ``hello`` with its token, counts as open at ``welcome``, answers pings, and
hands every ``msg`` to its worker with the arrival time. The worker (``bench.wsload``) owns the
figures; a connection only keeps its own state.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, cast

import orjson

from bench import wsproto

if TYPE_CHECKING:
    from bench.wsload import Worker

PONG = orjson.dumps({"type": "pong"})

HANDSHAKE, HELLO, OPEN, CLOSED = range(4)

_now_ns = time.time_ns


class HandshakeFailed(Exception):
    """A connection did not reach ``welcome``; the message is the failure's category."""


class WsClient(asyncio.Protocol):
    """The client end of one WebSocket: the upgrade, and frames out.

    A subclass writes the upgrade request in ``connection_made``, passes what arrives to
    :meth:`_upgrade` until that returns bytes, feeds those and the rest to ``codec``, and says in
    :meth:`_refused` and :meth:`_upgraded` what a refused and an accepted upgrade mean to it.
    """

    __slots__ = ("codec", "head", "key", "transport")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.key = wsproto.new_key()
        self.head = b""
        self.codec = wsproto.ClientCodec()

    def _upgrade(self, data: bytes) -> bytes:
        """Take bytes of the upgrade response; return the bytes that follow it.

        ``b""`` while the response is incomplete, when nothing follows it, and when it refuses the
        upgrade (after :meth:`_refused`, with the connection aborted).
        """
        buf = self.head + data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            self.head = buf
            return b""
        self.head = b""
        try:
            wsproto.parse_handshake_response(buf[:end], self.key)
        except wsproto.WsProtocolError as exc:
            self._refused(buf, exc)
            self.abort()
            return b""
        self._upgraded()
        return buf[end + 4 :]

    def _refused(self, response: bytes, exc: wsproto.WsProtocolError) -> None:
        """The server's ``response`` (its head and what followed) is not a valid upgrade."""

    def _upgraded(self) -> None:
        """The upgrade succeeded; frames follow."""

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def send_text(self, payload: bytes) -> None:
        self._write(wsproto.encode_frame(wsproto.OP_TEXT, payload))

    def close(self, code: int) -> None:
        """Send a close frame and close the transport after it is written."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(wsproto.encode_frame(wsproto.OP_CLOSE, code.to_bytes(2, "big")))
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class Conn(WsClient):
    """One client connection: handshake, hello, then frames."""

    __slots__ = ("slot", "state", "welcomed", "worker")

    def __init__(self, worker: Worker, slot: int, welcomed: asyncio.Future[None]) -> None:
        super().__init__()
        self.worker = worker
        self.slot = slot
        self.welcomed = welcomed
        self.state = HANDSHAKE

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.worker.transports += 1
        self.transport.write(wsproto.handshake_request(self.worker.target, self.key))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state != CLOSED:
            if self.state == OPEN:
                self.worker.closed["lost"] += 1
            self.state = CLOSED
        self.transport = None
        self.worker.transports -= 1
        if not self.worker.transports:
            self.worker.all_lost.set()
        self._fail("lost before welcome")

    def data_received(self, data: bytes) -> None:
        t = _now_ns()
        w = self.worker
        whole = self.codec.idle
        if whole and data == w.last_frame and self.state == OPEN:
            w.on_msg(self, w.last_msg, t)
            return
        if self.state == HANDSHAKE:
            data = self._upgrade(data)
            if not data:
                return
        try:
            frames = self.codec.feed(data)
        except wsproto.WsProtocolError:
            w.protocol_errors += 1
            self._fail("protocol error")
            self.abort()
            return
        whole = whole and len(frames) == 1 and self.codec.idle
        for opcode, payload in frames:
            if opcode == wsproto.OP_TEXT:
                msg = self._text(payload, t)
                if whole and msg is not None:
                    w.last_frame = data
                    w.last_msg = msg
            elif opcode == wsproto.OP_PING:
                self._write(wsproto.encode_frame(wsproto.OP_PONG, payload))
                self.worker.pings_answered += 1
            elif opcode == wsproto.OP_CLOSE:
                code = wsproto.close_payload(payload)
                self._fail(f"closed {code} before welcome")
                if self.state == OPEN:
                    self.worker.closed[str(code)] += 1
                self.close(1000)
            elif opcode != wsproto.OP_PONG:
                self.worker.unexpected_frames += 1

    def _refused(self, response: bytes, exc: wsproto.WsProtocolError) -> None:
        self._fail(f"handshake: {exc}")

    def _upgraded(self) -> None:
        self.state = HELLO
        s = self.worker.setup
        index = s.first + self.slot
        hello = {
            "type": "hello",
            "token": self.worker.tokens[self.slot],
            "device": f"{s.device_prefix}{index}",
        }
        self.send_text(orjson.dumps(hello))

    def _text(self, payload: bytes, t: int) -> dict[str, Any] | None:
        """Handle one text message; return it if it is a ``msg``."""
        w = self.worker
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            w.protocol_errors += 1
            return None
        if not isinstance(obj, dict):
            w.unexpected_frames += 1
            return None
        kind = obj.get("type")
        if kind == "msg":
            w.on_msg(self, obj, t)
            return obj
        if kind == "ping":
            self.send_text(PONG)
            w.pings_answered += 1
        elif kind == "welcome":
            self.state = OPEN
            if not self.welcomed.done():
                self.welcomed.set_result(None)
        elif kind == "error":
            self._fail(f"error {obj.get('code')}")
        elif kind != "pong":
            w.unexpected_frames += 1
        return None

    def _fail(self, reason: str) -> None:
        if not self.welcomed.done():
            self.welcomed.set_exception(HandshakeFailed(reason))
            # Retrieved by the ramp; mark it so a late failure is not logged as unretrieved.
            self.welcomed.exception()

    def close(self, code: int) -> None:
        super().close(code)
        if self.state == OPEN:
            self.state = CLOSED
