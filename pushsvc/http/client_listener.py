"""The client listener's HTTP phase: one :class:`HttpEdge` per accepted connection.

The edge reads one request with httptools. A ``GET /ws`` that is a valid upgrade
(:func:`pushsvc.core.handshake.check_upgrade`, with the Origin check of
``PUSHSVC_ALLOWED_ORIGINS``) and that the node admits gets its ``101``; the connection then
belongs to a WebSocket :class:`~pushsvc.node.session.Session`, fed whatever bytes were read after
the request head, and the edge is dropped. Any other request is answered by
:class:`~pushsvc.http.client_routes.ClientRoutes` (health, the client files, the demo page) and
the connection closed: every answer says ``Connection: close``.

Limits: a URL of 4 KiB, 64 headers of 8 KiB (else 400), a body of ``max_body_size`` (else 413).
One source address may hold ``max_pending_per_address`` connections that have not had their
hello accepted yet (:class:`pushsvc.core.flow.PendingPerAddress`); one more is answered 429
``too_many_pending`` at once, before anything is read.
Refusals carry a JSON body (:func:`pushsvc.errors.error_body`); a 405 says ``Allow``.

Until the upgrade the edge is one of ``node.connections`` (a drain closes it) and the hello timer
runs from the TCP accept: a connection that has not upgraded when ``hello_timeout`` runs out is
aborted without an answer. The timer is not restarted at the upgrade: the session takes it over.

Wire it where the node is assembled: ``await node.start(edge_factory(node))``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import httptools

from pushsvc.core.handshake import HandshakeRefused, check_upgrade
from pushsvc.core.session import REFUSED, admits
from pushsvc.errors import error_body
from pushsvc.http.client_routes import ClientRoutes
from pushsvc.node.session import CLOSE_TIMEOUT, Session
from pushsvc.telemetry import metrics

if TYPE_CHECKING:
    from pushsvc.node.gateway import Node

MAX_URL = 4096
MAX_HEADERS = 64
MAX_HEADER_VALUE = 8192


class _BodyTooLarge(Exception):
    pass


def edge_factory(node: Node) -> Callable[[], HttpEdge]:
    """The client listener's protocol factory for ``node`` (its routes are built once)."""
    routes = ClientRoutes(node)
    return lambda: HttpEdge(node, routes)


class HttpEdge(asyncio.Protocol):
    """A client connection until it upgrades. :class:`ClientRoutes` answers through
    :meth:`http_answer` and reads :attr:`headers` (names lower-cased)."""

    __slots__ = (
        "_address",
        "_body",
        "_http",
        "_method",
        "_node",
        "_routes",
        "_session",
        "_timer",
        "_url",
        "headers",
        "remote",
        "transport",
    )

    def __init__(self, node: Node, routes: ClientRoutes) -> None:
        self._node = node
        self._routes = routes
        self.transport: asyncio.Transport | None = None
        self._http: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self._url = b""
        self._method = b""
        self._body: bytearray | None = None
        self.headers: dict[bytes, bytes] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._session: Session | None = None  # once upgraded
        self.remote = ""
        self._address = ""  # counted in node.pending ("": not counted)

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)  # uvloop's is not a subclass
        peer = self.transport.get_extra_info("peername")
        self.remote = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        address = str(peer[0]) if isinstance(peer, tuple) else self.remote
        if not self._node.pending.enter(address):
            metrics.connections_opened.labels("refused").inc()
            self._http = None
            message = "too many connections from this address are waiting for their hello"
            body = error_body("too_many_pending", message)
            self.http_answer(429, b"application/json", body, extra=b"Retry-After: 1\r\n")
            return
        self._address = address
        self._node.connections.add(self)
        self._timer = self._node.loop.call_later(self._node.settings.hello_timeout, self._no_hello)

    def data_received(self, data: bytes) -> None:
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

    def connection_lost(self, exc: Exception | None) -> None:
        # Only while the edge is the transport's protocol: after the upgrade the session's.
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.transport = None
        self._node.connections.discard(self)
        self._http = None  # the parser holds this protocol: a cycle
        if self._address:
            self._node.pending.leave(self._address)
            self._address = ""

    # -- httptools callbacks ----------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > MAX_URL:
            raise httptools.HttpParserError("URL too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(self.headers) > MAX_HEADERS or len(value) > MAX_HEADER_VALUE:
            raise httptools.HttpParserError("headers too large")
        self.headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        if self._body is None:
            self._body = bytearray()
        self._body += body
        if len(self._body) > self._node.settings.max_body_size:
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
        self._routes.handle(self, self._method, self._url, bytes(self._body or b""))

    # -- the upgrade ------------------------------------------------------------------------

    def _upgrade(self, rest: bytes) -> None:
        assert self._http is not None
        method = self._http.get_method()
        path = httptools.parse_url(self._url).path
        if path != b"/ws":
            self._http_answer(404, b"not found")
            return
        node = self._node
        settings = node.settings
        try:
            response = check_upgrade(method, self.headers, settings.origins)
        except HandshakeRefused as exc:
            self._http_answer(exc.status, exc.message.encode())
            return
        # Every upgraded connection counts, hello or not: connections that never say hello must
        # not get past the limit (nor hold the node's file descriptors) for free.
        if not admits(len(node.upgraded), settings.max_connections, node.draining):
            metrics.connections_opened.labels("refused").inc()
            self._http_answer(503, REFUSED.encode())
            return
        transport = self.transport
        assert transport is not None
        self._http = None  # nothing more is parsed here (and the parser holds this edge: a cycle)
        self.headers.clear()
        # The hello timer runs on from the accept; its callback (this edge's) now asks the
        # session, and the session cancels it when the hello is accepted.
        session = self._session = Session(node, self.remote, self._timer, self._address)
        self._timer = None
        self._address = ""  # the session leaves node.pending at its hello
        self.transport = None  # the session's from here on
        node.connections.discard(self)
        transport.write(response)
        transport.set_protocol(session)
        session.connection_made(transport)
        if rest:
            session.data_received(rest)

    def _no_hello(self) -> None:
        if self._session is not None:
            self._session._no_hello()  # the timer is the session's now
        elif self.transport is not None:
            self._timer = None
            self.transport.abort()

    # -- answers ----------------------------------------------------------------------------

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
            status,
            reason,
            content_type,
            len(body),
        )
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

    # -- what the node calls ----------------------------------------------------------------

    def close(self, code: int, slug: str = "", message: str = "") -> None:
        """Close the connection (the node drains): before the upgrade no answer is owed, so
        ``code``, ``slug`` and ``message`` go nowhere. Aborted if not closed within
        ``CLOSE_TIMEOUT``."""
        if self.transport is None:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._node.loop.call_later(CLOSE_TIMEOUT, self.abort)
        self.transport.close()

    def abort(self) -> None:
        """Drop the TCP connection now."""
        if self.transport is not None:
            self.transport.abort()


_REASONS = {
    200: b"OK", 202: b"Accepted", 400: b"Bad Request", 401: b"Unauthorized", 403: b"Forbidden",
    404: b"Not Found", 405: b"Method Not Allowed", 413: b"Payload Too Large",
    422: b"Unprocessable Entity", 426: b"Upgrade Required", 429: b"Too Many Requests",
    503: b"Service Unavailable",
}  # fmt: skip
_SLUGS = {
    400: "bad_request", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    413: "body_too_large", 426: "upgrade_required", 503: "unavailable",
}  # fmt: skip
