"""The publish lane: well-formed publishes answered without the FastAPI stack.

``POST /v1/messages`` and ``POST /v1/messages/batch`` carry nearly all of the internal API's
traffic, and most of a publish's CPU went to the framework around it: routing, dependencies, four
middlewares, pydantic, response encoding (docs/benchmarks.md § 3c). :class:`PublishLane` is an
ASGI middleware in front of all that. It takes a publish when

- the API key may publish (:meth:`pushsvc.http.access.Gate.admit`; its refusal is answered
  here),
- the body's length is declared and within ``max_body_size``,
- :func:`pushsvc.http.jsonguard.problem` finds nothing wrong with it (depth, NaN, infinities),
- msgspec decodes the body as the request schema (:class:`pushsvc.http.bodies.PublishRequest`,
  :class:`pushsvc.http.bodies.BatchRequest`), and
- :func:`pushsvc.http.bodies.message` takes every message,

publishes it and answers 202. Anything else goes on, body included, to the FastAPI routes, which
decode it with the same schemas, check it with the same function, and give the precise error;
both publish through the same :class:`pushsvc.http.publishing.Publishing`. (``tests/test_lane.py``
checks that a node answers a table of bodies the same with the lane and without it.)

While tracing is on, requests take the routes, where
:class:`pushsvc.telemetry.tracing.ServerSpans` opens their SERVER span.
"""

from __future__ import annotations

import msgspec
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pushsvc.apikeys import Scope as KeyScope
from pushsvc.http import jsonguard
from pushsvc.http.access import Gate, answer
from pushsvc.http.bodies import BatchRequest, PublishRequest, message, utf8
from pushsvc.http.publishing import ApiError, Publishing
from pushsvc.node.publish import Outgoing
from pushsvc.telemetry import tracing

_single = msgspec.json.Decoder(PublishRequest)
_batch = msgspec.json.Decoder(BatchRequest)
_encode = msgspec.json.Encoder().encode
_JSON_HEADERS = [(b"content-type", b"application/json")]


def lane_outgoing(m: PublishRequest, default_ttl: int, max_data: int) -> Outgoing | None:
    """``m`` as a message to publish, or None when the routes must judge it (and answer why)."""
    try:
        return message(m, default_ttl, max_data)
    except ValueError:
        return None


class PublishLane:
    """ASGI middleware: well-formed publishes are published here, everything else goes to
    ``app``."""

    def __init__(self, app: ASGIApp, *, publishing: Publishing, gate: Gate) -> None:
        self.app = app
        self.publishing = publishing
        self.gate = gate
        settings = publishing.settings
        self.limit = settings.max_body_size
        self.default_ttl = settings.default_ttl
        self.max_data = settings.max_message_size

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or tracing.tracer is not None:
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path == "/v1/messages":
            batch = False
        elif path == "/v1/messages/batch":
            batch = True
        else:
            await self.app(scope, receive, send)
            return
        length = authorization = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value
            elif name == b"authorization":
                authorization = value
        if (
            length is None
            or not length.isdigit()
            or int(length) > self.limit
            or authorization is None
        ):
            await self.app(scope, receive, send)
            return
        try:
            key = await self.gate.admit(authorization.decode("latin-1"), KeyScope.PUBLISH)
        except ApiError as exc:
            await answer(exc)(scope, receive, send)
            return
        scope.setdefault("state", {})["api_key"] = key  # admitted: the routes do not charge again
        body, more = await _read(receive, self.limit)
        items = self._items(body, batch) if more is None else None
        if items is None:
            await self.app(scope, _replay(body, more, receive), send)
            return
        try:
            results = await self.publishing.run(items, key.name, batch)
        except ApiError as exc:
            await answer(exc)(scope, receive, send)
            return
        payload = _encode({"results": results} if batch else results[0])
        await send({"type": "http.response.start", "status": 202, "headers": [
            *_JSON_HEADERS, (b"content-length", b"%d" % len(payload))]})  # fmt: skip
        await send({"type": "http.response.body", "body": payload})

    def _items(self, body: bytes, batch: bool) -> list[Outgoing] | None:
        if jsonguard.problem(body) is not None or not utf8(body):
            return None  # the routes refuse it (422, or 400 for bytes that are not UTF-8)
        try:
            messages = _batch.decode(body).messages if batch else [_single.decode(body)]
        except msgspec.DecodeError:
            return None
        items = []
        for m in messages:
            item = lane_outgoing(m, self.default_ttl, self.max_data)
            if item is None:
                return None
            items.append(item)
        return items


async def _read(receive: Receive, limit: int) -> tuple[bytes, Message | None]:
    """The request body, read up to ``limit`` bytes; the second item is the message that went
    past the limit or was not a body chunk (left for the routes), else None."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), message
        chunk = message.get("body", b"")
        size += len(chunk)
        chunks.append(chunk)
        if size > limit:
            return b"".join(chunks), {"type": "http.request", "body": b"", "more_body": False}
        if not message.get("more_body", False):
            return b"".join(chunks), None


def _replay(body: bytes, after: Message | None, receive: Receive) -> Receive:
    """A ``receive`` that gives ``body`` (already read) as one chunk, then ``after`` if any,
    then whatever ``receive`` gives."""
    queue: list[Message] = [{"type": "http.request", "body": body, "more_body": after is not None}]
    if after is not None:
        queue.append(after)

    async def replayed() -> Message:
        return queue.pop(0) if queue else await receive()

    return replayed
