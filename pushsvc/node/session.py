"""One WebSocket client connection: an asyncio protocol that pumps frames through the sans-io
``websockets`` protocol.

A session starts upgraded: the client listener's HTTP phase (its edge, built where the node is
assembled) answered the handshake with its 101, then made the session the transport's protocol
and called :meth:`Session.connection_made`. Text frames are decoded by :mod:`pushsvc.core.frames`
and handed to the node; server frames are written straight to the transport, pre-framed, so a
broadcast is encoded once per node.

The rules of the session's life (phases, frames allowed when, the live buffer during replay,
dedupe by offset, heartbeats, admission) are :class:`pushsvc.core.session.SessionCore`'s; this
module only feeds it and applies what it returns.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Protocol, cast

from websockets.exceptions import InvalidState
from websockets.frames import Frame, Opcode
from websockets.protocol import State as WsState
from websockets.server import ServerProtocol

from pushsvc.core import frames
from pushsvc.core.flow import PendingPerAddress, TokenBucket
from pushsvc.core.session import Phase, SessionCore
from pushsvc.errors import FrameError
from pushsvc.telemetry import metrics

if TYPE_CHECKING:
    from pushsvc.core.offsets import Position
    from pushsvc.settings import Settings
    from pushsvc.types import Message

log = logging.getLogger(__name__)
_ws_log = logging.getLogger("websockets.server")

CLOSE_TIMEOUT = 2.0


class _Frames(ServerProtocol):
    """websockets' sans-io protocol, already open, that reports an oversized frame as 4004."""

    def fail(self, code: int, reason: str = "") -> None:
        if code == 1009 and self.state is WsState.OPEN:
            self.send_text(frames.encode_error("frame_too_large", reason or "frame too large"))
            metrics.frames_rejected.labels("frame_too_large").inc()
            code, reason = 4004, "frame too large"
        super().fail(code, reason)


class Connection(Protocol):
    """An open client connection as its node sees it: a session, or the client listener's HTTP
    edge before an upgrade."""

    def close(self, code: int, slug: str = "", message: str = "") -> None: ...

    def abort(self) -> None: ...


class Host(Protocol):
    """What a session needs of its node (``Node`` is one): where it is counted, its settings and
    loop, and where it hands frames and its end."""

    settings: Settings
    connections: set[Connection]  # every open connection, upgraded or not
    upgraded: set[Session]  # every WebSocket connection, hello or not
    over_cap: set[Session]  # sessions whose outbox is over its cap
    pending: PendingPerAddress  # connections per source address before their hello

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...  # the node's, once started

    @property
    def draining(self) -> bool: ...  # refusing new clients (drain or shutdown)

    def frame_received(self, session: Session, frame: frames.ClientFrame) -> None: ...

    def session_closed(self, session: Session, code: int, phase: Phase) -> None: ...


class Session(asyncio.Protocol):
    """A WebSocket client connection. The node calls :meth:`offer`, :meth:`write` and
    :meth:`close`.

    Built at the upgrade with the client's ``remote`` address and the hello timer started at
    the TCP accept (None: none); the upgrading side then writes the 101, makes the session the
    transport's protocol and calls :meth:`connection_made`, then :meth:`data_received` with
    whatever it had read after the request head.
    """

    __slots__ = (
        "_address",
        "_close_code",
        "_held",
        "_over",
        "_timer",
        "_ws",
        "bucket",
        "connected_at",
        "core",
        "device",
        "id",
        "issued",
        "node",
        "remote",
        "streams",
        "topics",
        "transport",
        "user",
    )

    def __init__(
        self, node: Host, remote: str, timer: asyncio.TimerHandle | None, address: str = ""
    ) -> None:
        self.node = node
        self._address = address  # counted in node.pending until the hello ("": not counted)
        self.core: SessionCore[Message] = SessionCore()
        self.transport: asyncio.Transport | None = None
        self._ws: _Frames | None = None
        self._timer = timer  # the hello timer
        self._close_code = 1006
        self._over: float | None = None  # when the outbox went over its cap
        self._held: list[Frame] | None = None  # frames read while over the frame rate
        self.id = ""
        self.user = ""
        self.device = ""
        self.issued: int | None = None  # the token's iat (revocations close by it)
        self.topics: tuple[str, ...] = ()
        self.streams: tuple[str, ...] = ()
        self.remote = remote
        self.connected_at = 0.0
        self.bucket: TokenBucket | None = None

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """The connection was upgraded (its 101 written): count it and start reading frames."""
        settings = self.node.settings
        self.transport = cast("asyncio.Transport", transport)  # uvloop's is not a subclass
        self._ws = _Frames(state=WsState.OPEN, max_size=settings.max_frame_size, logger=_ws_log)
        self.core.upgraded()
        self.node.connections.add(self)
        self.node.upgraded.add(self)
        self.connected_at = time.time()
        # Rate limited from the first frame: a hello is a frame like any other.
        self.bucket = TokenBucket.full(
            settings.client_frame_rate, settings.client_frame_burst, time.monotonic()
        )
        self.transport.set_write_buffer_limits(high=settings.outbox_cap)

    def data_received(self, data: bytes) -> None:
        if self._ws is not None:
            self._ws.receive_data(data)
            self._pump()

    def eof_received(self) -> bool | None:
        if self._ws is not None:
            self._ws.receive_eof()
            self._pump()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._leave_pending()
        was = self.core.closed()
        self.transport = None
        self.node.connections.discard(self)
        self.node.upgraded.discard(self)
        if self._ws is not None:
            # The sans-io protocol and its parser generator reference each other. Closing the
            # generator frees the cycle by refcounting, which matters because long-lived sessions
            # are moved out of the collector's sight by gc.freeze() (see Node.tick).
            self._ws.parser.close()
            self._ws = None
        if was >= Phase.HELLO:
            self.node.session_closed(self, self._close_code, was)

    def pause_writing(self) -> None:
        self._over = time.monotonic()
        self.node.over_cap.add(self)

    def resume_writing(self) -> None:
        self._over = None
        self.node.over_cap.discard(self)

    # -- the hello -----------------------------------------------------------------------------

    def hello_accepted(self) -> None:
        """The node accepted the hello: stop the hello timer; no longer pending."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._leave_pending()

    def _leave_pending(self) -> None:
        if self._address:
            self.node.pending.leave(self._address)
            self._address = ""

    def _no_hello(self) -> None:
        self._timer = None
        if (effect := self.core.hello_timeout()) is not None:
            metrics.connections_opened.labels("hello_timeout").inc()
            self.close(effect.code, effect.slug, effect.message)

    # -- WebSocket phase --------------------------------------------------------------------

    def _pump(self) -> None:
        ws = self._ws
        assert ws is not None
        for event in ws.events_received():
            if not isinstance(event, Frame):
                continue  # handshake events: the handshake was ours, none arrive
            if self._held is not None:
                self._held.append(event)  # over the frame rate: read after the wait
            else:
                self._take(event)
        self._settle()

    def _take(self, frame: Frame) -> None:
        if self.core.phase >= Phase.CLOSING and frame.opcode is not Opcode.CLOSE:
            return
        bucket = self.bucket
        if frame.opcode is Opcode.TEXT and bucket is not None and self.transport is not None:
            wait = bucket.take(time.monotonic())
            if wait > 0:
                # Backpressure, not punishment: this frame is handled, the ones that follow wait,
                # and the socket is not read meanwhile.
                metrics.frames_rejected.labels("rate_limited").inc()
                self.transport.pause_reading()
                self._held = []
                self.node.loop.call_later(wait, self._release)
        try:
            self._frame(frame)
        except Exception:  # a bug of ours: never let it out of data_received
            log.exception("frame handling failed", extra={"session": self.id})
            self.close(1011, "internal_error", "internal error, reconnect")

    def _release(self) -> None:
        """The wait is over: handle the frames held back, then read the socket again."""
        held, self._held = self._held or [], None
        if self._ws is None or self.transport is None:
            return
        for i, frame in enumerate(held):
            if self._held is not None:  # over the rate again
                self._held.extend(held[i:])
                break
            self._take(frame)
        if self._held is None and not self.transport.is_closing():
            self.transport.resume_reading()
        self._settle()

    def _settle(self) -> None:
        """Write what the WebSocket protocol has to send and follow its closing handshake."""
        ws = self._ws
        if ws is None:
            return
        self._flush()
        if ws.close_sent is not None and self.core.closing():
            # the protocol itself closed (4004, 1002, 1007)
            self._close_code = ws.close_sent.code
            self._timer = self._timer or self.node.loop.call_later(CLOSE_TIMEOUT, self._abort)
        if ws.close_expected() and self.transport is not None:
            if ws.close_rcvd is not None and self._close_code == 1006:
                self._close_code = ws.close_rcvd.code
            if ws.state is WsState.CLOSED or ws.close_rcvd is not None:
                self.transport.close()

    def _frame(self, frame: Frame) -> None:
        op = frame.opcode
        if op is Opcode.TEXT:
            if not frame.fin:
                self._reject(FrameError("fragmented messages are not accepted", slug="fragmented"))
                return
            try:
                decoded = frames.decode_client_frame(frame.data)
            except FrameError as exc:
                self._reject(exc)
                return
            self.node.frame_received(self, decoded)
        elif op is Opcode.BINARY or op is Opcode.CONT:
            self._reject(FrameError("only JSON text frames are accepted", slug="binary_frame"))
        elif op is Opcode.CLOSE and self._close_code == 1006:
            ws = self._ws
            self._close_code = ws.close_rcvd.code if ws and ws.close_rcvd else 1005

    def _reject(self, exc: FrameError) -> None:
        metrics.frames_rejected.labels(exc.slug).inc()
        self.close(exc.code, exc.slug, exc.message)

    def _flush(self) -> None:
        ws = self._ws
        transport = self.transport
        if ws is None or transport is None:
            return
        for chunk in ws.data_to_send():
            if chunk:
                transport.write(chunk)
            elif not transport.is_closing():
                transport.close()  # the protocol asks for EOF: close the TCP connection

    # -- what the node calls ----------------------------------------------------------------

    def write(self, payload: bytes) -> None:
        """Write a pre-framed server frame (see :func:`frames.ws_text_frame`)."""
        transport = self.transport
        if transport is not None and self.core.phase < Phase.CLOSING:
            transport.write(payload)

    def offer(self, stream: str, position: Position, message: Message, frame: bytes) -> bool:
        """Give a live message to this session; True when it was written now."""
        if self.core.offer(stream, position, message, frame):
            transport = self.transport
            if transport is not None:  # (it is while live: connection_lost ends the phase first)
                transport.write(frame)
                return True
        return False

    def outbox_bytes(self) -> int:
        transport = self.transport
        return transport.get_write_buffer_size() if transport is not None else 0

    def over_since(self) -> float | None:
        return self._over

    def close(self, code: int, slug: str = "", message: str = "") -> None:
        """Send an error frame (when ``slug``) and a close frame with ``code``, then close.

        The TCP connection is aborted if the client does not complete the close handshake within
        a couple of seconds.
        """
        if self.transport is None or not self.core.closing():
            return
        ws = self._ws
        self._close_code = code
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.node.loop.call_later(CLOSE_TIMEOUT, self._abort)
        if ws is None:
            self.transport.close()
            return
        try:
            if slug:
                ws.send_text(frames.encode_error(slug, message or slug))
            ws.send_close(code, message[:120])
        except InvalidState:
            pass  # the protocol is already closing: the code it carries stands
        self._flush()

    def abort(self) -> None:
        """Drop the TCP connection now, without a close handshake."""
        if self.transport is not None:
            self.transport.abort()

    def _abort(self) -> None:
        self._timer = None
        if self.transport is not None:
            self.transport.abort()
