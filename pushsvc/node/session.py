"""One client connection: an asyncio protocol that pumps bytes through two parsers.

First HTTP (httptools): a ``GET /ws`` upgrade becomes a WebSocket session; any other request is
answered by :mod:`pushsvc.http.client_routes` and the connection closed. Then WebSocket frames
(the sans-io ``websockets`` protocol): text frames are decoded by :mod:`pushsvc.core.frames` and
handed to the node; server frames are written straight to the transport, pre-framed, so a
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

import httptools
from websockets.exceptions import InvalidState
from websockets.frames import Frame, Opcode
from websockets.protocol import State as WsState
from websockets.server import ServerProtocol

from pushsvc.core import frames
from pushsvc.core.flow import TokenBucket
from pushsvc.core.handshake import HandshakeRefused, check_upgrade
from pushsvc.core.session import REFUSED, Phase, SessionCore, admits
from pushsvc.errors import FrameError, error_body
from pushsvc.telemetry import metrics

if TYPE_CHECKING:
    from pushsvc.core.offsets import Position
    from pushsvc.settings import Settings
    from pushsvc.types import Message

log = logging.getLogger(__name__)
_ws_log = logging.getLogger("websockets.server")

CLOSE_TIMEOUT = 2.0
MAX_HEADER_BYTES = 16 * 1024


class _BodyTooLarge(Exception):
    pass


class _Frames(ServerProtocol):
    """websockets' sans-io protocol, already open, that reports an oversized frame as 4004."""

    def fail(self, code: int, reason: str = "") -> None:
        if code == 1009 and self.state is WsState.OPEN:
            self.send_text(frames.encode_error("frame_too_large", reason or "frame too large"))
            metrics.frames_rejected.labels("frame_too_large").inc()
            code, reason = 4004, "frame too large"
        super().fail(code, reason)


class Host(Protocol):
    """What a session needs of its node (``Node`` is one): where it is counted, its settings and
    loop, and where it hands frames, plain HTTP requests and its end."""

    settings: Settings
    connections: set[Session]  # every open connection
    upgraded: set[Session]  # every WebSocket connection, hello or not
    over_cap: set[Session]  # sessions whose outbox is over its cap

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...  # the node's, once started

    @property
    def draining(self) -> bool: ...  # refusing new clients (drain or shutdown)

    def frame_received(self, session: Session, frame: frames.ClientFrame) -> None: ...

    def http_request(self, session: Session, method: bytes, url: bytes, body: bytes) -> None: ...

    def session_closed(self, session: Session, code: int, phase: Phase) -> None: ...


class Session(asyncio.Protocol):
    """A client connection. The node calls :meth:`offer`, :meth:`write` and :meth:`close`."""

    __slots__ = (
        "_body",
        "_close_code",
        "_held",
        "_http",
        "_method",
        "_over",
        "_timer",
        "_url",
        "_ws",
        "bucket",
        "connected_at",
        "core",
        "device",
        "headers",
        "id",
        "issued",
        "node",
        "remote",
        "streams",
        "topics",
        "transport",
        "user",
    )

    def __init__(self, node: Host) -> None:
        self.node = node
        self.core: SessionCore[Message] = SessionCore()
        self.transport: asyncio.Transport | None = None
        self._http: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self._ws: _Frames | None = None
        self._url = b""
        self._method = b""
        self._body: bytearray | None = None
        self.headers: dict[bytes, bytes] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._close_code = 1006
        self._over: float | None = None  # when the outbox went over its cap
        self._held: list[Frame] | None = None  # frames read while over the frame rate
        self.id = ""
        self.user = ""
        self.device = ""
        self.issued: int | None = None  # the token's iat (revocations close by it)
        self.topics: tuple[str, ...] = ()
        self.streams: tuple[str, ...] = ()
        self.remote = ""
        self.connected_at = 0.0
        self.bucket: TokenBucket | None = None

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)  # uvloop's is not a subclass
        peer = self.transport.get_extra_info("peername")
        self.remote = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.node.connections.add(self)
        self._timer = self.node.loop.call_later(self.node.settings.hello_timeout, self._no_hello)

    def data_received(self, data: bytes) -> None:
        if self._ws is not None:
            self._ws.receive_data(data)
            self._pump()
            return
        if self._http is None:
            return
        try:
            self._http.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._upgrade(data[upgrade.args[0] :])
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _BodyTooLarge):
                self._http_answer(413, b"request body too large")
            else:
                self._http_answer(400, b"malformed HTTP request")
        except httptools.HttpParserError:
            self._http_answer(400, b"malformed HTTP request")

    def eof_received(self) -> bool | None:
        if self._ws is not None:
            self._ws.receive_eof()
            self._pump()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        was = self.core.closed()
        self.transport = None
        self.node.connections.discard(self)
        self.node.upgraded.discard(self)
        self._http = None  # the parser holds this protocol: a cycle
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

    # -- httptools callbacks ----------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > 4096:
            raise httptools.HttpParserError("URL too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(self.headers) > 64 or len(value) > 8192:
            raise httptools.HttpParserError("headers too large")
        self.headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        if self._body is None:
            self._body = bytearray()
        self._body += body
        if len(self._body) > self.node.settings.max_body_size:
            raise _BodyTooLarge("body too large")

    def on_message_complete(self) -> None:
        assert self._http is not None
        if self._http.should_upgrade():
            return  # feed_data raises HttpParserUpgrade next: see _upgrade
        self._method = self._http.get_method()
        path = httptools.parse_url(self._url).path
        if path == b"/ws":
            self._http_answer(426, b"this endpoint speaks WebSocket only")
            return
        self.node.http_request(self, self._method, self._url, bytes(self._body or b""))

    # -- HTTP phase -------------------------------------------------------------------------

    def _upgrade(self, rest: bytes) -> None:
        assert self._http is not None
        method = self._http.get_method()
        path = httptools.parse_url(self._url).path
        if path != b"/ws":
            self._http_answer(404, b"not found")
            return
        try:
            response = check_upgrade(method, self.headers, self.node.settings.origins)
        except HandshakeRefused as exc:
            self._http_answer(exc.status, exc.message.encode())
            return
        settings = self.node.settings
        # Every upgraded connection counts, hello or not: connections that never say hello must
        # not get past the limit (nor hold the node's file descriptors) for free.
        if not admits(len(self.node.upgraded), settings.max_connections, self.node.draining):
            metrics.connections_opened.labels("refused").inc()
            self._http_answer(503, REFUSED.encode())
            return
        self._http = None
        self.headers = {}
        self._ws = _Frames(state=WsState.OPEN, max_size=settings.max_frame_size, logger=_ws_log)
        self.core.upgraded()
        self.node.upgraded.add(self)
        self.connected_at = time.time()
        # Rate limited from the first frame: a hello is a frame like any other.
        self.bucket = TokenBucket.full(
            settings.client_frame_rate, settings.client_frame_burst, time.monotonic()
        )
        assert self.transport is not None
        self.transport.write(response)
        self.transport.set_write_buffer_limits(high=self.node.settings.outbox_cap)
        if rest:
            self.data_received(rest)

    def http_answer(
        self,
        status: int,
        content_type: bytes,
        body: bytes,
        *,
        allow: bytes = b"",
        extra: bytes = b"",
    ) -> None:
        """Answer the HTTP request this connection carries, then close it. ``allow``: the
        methods the path takes, sent as ``Allow`` (a 405 must say them); ``extra``: more header
        lines, each ending in CRLF (CORS, :mod:`pushsvc.http.cors`)."""
        if self.transport is None or self.transport.is_closing():
            return
        reason = _REASONS.get(status, b"Status")
        head = b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n" % (
            status, reason, content_type, len(body),
        )  # fmt: skip
        if allow:
            head += b"Allow: %s\r\n" % allow
        head += extra
        self.transport.write(
            head
            + b"Cache-Control: no-store\r\nConnection: close\r\n\r\n"
            + (body if self._method != b"HEAD" else b"")
        )
        self.transport.close()

    def _http_answer(self, status: int, message: bytes) -> None:
        body = error_body(_SLUGS.get(status, "error"), message.decode())
        self.http_answer(status, b"application/json", body, allow=b"GET" if status == 405 else b"")

    def hello_accepted(self) -> None:
        """The node accepted the hello: stop the hello timer."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _no_hello(self) -> None:
        self._timer = None
        if self.core.phase == Phase.HTTP:
            if self.transport is not None:
                self.transport.abort()
        elif (effect := self.core.hello_timeout()) is not None:
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


_REASONS = {
    200: b"OK", 202: b"Accepted", 400: b"Bad Request", 401: b"Unauthorized", 403: b"Forbidden",
    404: b"Not Found", 405: b"Method Not Allowed", 413: b"Payload Too Large",
    422: b"Unprocessable Entity", 426: b"Upgrade Required", 503: b"Service Unavailable",
}  # fmt: skip
_SLUGS = {
    400: "bad_request", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    413: "body_too_large", 426: "upgrade_required", 503: "unavailable",
}  # fmt: skip
