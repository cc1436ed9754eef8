"""One load-client connection speaking Socket.IO 4 (Engine.IO v4 over a WebSocket).

The same pump as ``bench.wsconn`` (upgrade, frames, the broadcast fast path, timing), with
Socket.IO's packets instead of pushsvc's JSON frames. After the upgrade the server sends the
Engine.IO open packet ``0{...}``; the client connects to the main namespace with
``40{"user": ...}`` and counts as open at the server's ``40{"sid": ...}``. It answers the server's
pings ``2`` with ``3``, and an event ``42["msg", {...}]`` is handed to the worker exactly as a
pushsvc ``msg`` frame would be: the publisher (``bench.peer``) puts ``event``, ``id`` and
``data`` in the event's argument. Nothing is acknowledged (Socket.IO emits carry no ack here).

Select it with ``Setup.protocol = "socketio"``; the URL is then
``ws://host:port/socket.io/?EIO=4&transport=websocket``.
"""

from __future__ import annotations

from typing import Any

import orjson

from bench.common import user_id
from bench.wsconn import CLOSED, HELLO, OPEN, Conn

PONG = b"3"


class SioConn(Conn):
    """A :class:`Conn` whose text messages are Engine.IO / Socket.IO packets."""

    __slots__ = ()

    def _upgraded(self) -> None:
        self.state = HELLO  # waiting for the open packet, then for the namespace's CONNECT

    def _text(self, payload: bytes, t: int) -> dict[str, Any] | None:
        """Handle one Engine.IO packet; return the event's argument if it is a ``msg``."""
        w = self.worker
        kind = payload[:1]
        if kind == b"4":  # Engine.IO message: a Socket.IO packet follows
            sio = payload[1:2]
            if sio == b"2":
                return self._event(payload[2:], t)
            if sio == b"0":
                self.state = OPEN
                if not self.welcomed.done():
                    self.welcomed.set_result(None)
            elif sio == b"4":
                self._fail(f"connect_error {payload[2:80]!r}")
            elif sio == b"1":
                self._fail("disconnected by the server")
                if self.state == OPEN:
                    w.closed["disconnect"] += 1
                    self.state = CLOSED
            else:
                w.unexpected_frames += 1
        elif kind == b"2":
            self.send_text(PONG)
            w.pings_answered += 1
        elif kind == b"0":
            s = w.setup
            hello = {"user": user_id(s.user_prefix, s.first + self.slot)}
            self.send_text(b"40" + orjson.dumps(hello))
        elif kind == b"1":
            self._fail("engine.io close")
        else:
            w.unexpected_frames += 1
        return None

    def _event(self, body: bytes, t: int) -> dict[str, Any] | None:
        w = self.worker
        try:
            event = orjson.loads(body)
        except orjson.JSONDecodeError:
            w.protocol_errors += 1
            return None
        if (
            not isinstance(event, list)
            or len(event) != 2
            or event[0] != "msg"
            or not isinstance(event[1], dict)
        ):
            w.unexpected_frames += 1
            return None
        obj: dict[str, Any] = event[1]
        w.on_msg(self, obj, t)
        return obj
