"""The internal API: publish, trails, tokens, nodes, sessions, health, metrics.

Mounted on the internal listener only. Everything under ``/v1`` needs ``Authorization: Bearer
<api key>`` of a key with the route's scope (:mod:`pushsvc.http.access`); ``/metrics``,
``/healthz`` and ``/readyz`` do not. ``/docs`` and ``/openapi.json`` exist only with ``--docs``
(or ``--dev``). Every error is JSON
``{"error": {"code", "message"}}`` with a 4xx status for bad input, 503 when the broker is down.
Bodies pass :class:`BodyLimit` (413) and :class:`JsonGuard` (422: nested too deep, NaN or an
infinity) before any route parses them.
"""

from __future__ import annotations

import logging
import time
from typing import Annotated, Any, TypeVar

import msgspec
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pushsvc import __version__
from pushsvc.apikeys import ApiKey, KeyRing
from pushsvc.broker.base import Command, split_device_key
from pushsvc.core import trail as trails
from pushsvc.core.trail import Trail
from pushsvc.errors import AuthError, BrokerError
from pushsvc.http import jsonguard
from pushsvc.http.access import Gate, answer
from pushsvc.http.admin import admin_routes
from pushsvc.http.answers import BatchResult, TokenAnswer
from pushsvc.http.bodies import (
    BatchRequest,
    DataTooLarge,
    Invalid,
    PublishRequest,
    TokenRequest,
    message,
    utf8,
    where,
)
from pushsvc.http.cluster_admin import cluster_admin_routes
from pushsvc.http.lane import PublishLane
from pushsvc.http.openapi import BODY, NO_BODY, DocumentedAPI, answers
from pushsvc.http.publishing import UNAVAILABLE, ApiError, Publishing, error_response
from pushsvc.http.webhook_routes import webhook_routes
from pushsvc.node.gateway import Node
from pushsvc.node.publish import Outgoing
from pushsvc.records import MessageTrail, NodeList, PublishResult, SessionClosing, SessionList
from pushsvc.telemetry import metrics, tracing

log = logging.getLogger(__name__)
PUBLISH_ROUTES = ("POST", "/v1/messages"), ("POST", "/v1/messages/batch")  # traced
#: What a publish can answer besides 202 (and 401, 403).
PUBLISH_ERRORS = (*BODY, 409, 429, 503)


class BodyLimit:
    """Refuse request bodies larger than ``limit`` bytes with 413, before they are read whole."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            response = error_response(
                413, "body_too_large", f"request body exceeds {self.limit} bytes"
            )
            await response(scope, receive, send)
            return
        seen = 0
        started = False

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise ApiError(
                        413, "body_too_large", f"request body exceeds {self.limit} bytes"
                    )
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, tracked)
        except ApiError as exc:
            if not started:
                await error_response(exc.status, exc.code, exc.message)(scope, receive, send)


class JsonGuard:
    """Refuse request bodies :func:`pushsvc.http.jsonguard.problem` finds nested too deep or
    holding NaN or an infinity with 422 ``invalid_body``, for every route, before any parser
    sees them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left: let the app see it
                await self.app(scope, _replaying([message], receive), send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        refusal = jsonguard.problem(body)
        if refusal is not None:
            details = [{"loc": ["body"], "msg": refusal}]
            await error_response(422, "invalid_body", refusal, details=details)(
                scope, receive, send
            )
            return
        whole: Message = {"type": "http.request", "body": body, "more_body": False}
        await self.app(scope, _replaying([whole], receive), send)


def _replaying(messages: list[Message], receive: Receive) -> Receive:
    """A ``receive`` that gives ``messages`` first, then whatever ``receive`` gives."""

    async def replayed() -> Message:
        return messages.pop(0) if messages else await receive()

    return replayed


T = TypeVar("T")
MALFORMED = "request body is not valid JSON"


async def parse(request: Request, decoder: msgspec.json.Decoder[T]) -> T:
    """The raw body decoded by ``decoder`` (of a schema of :mod:`pushsvc.http.bodies`),
    whatever the Content-Type says. Raises :class:`ApiError`: 400 ``malformed_json`` for what
    is not JSON (or not UTF-8), 422 ``invalid_body`` saying where for what the schema
    refuses."""
    body = await request.body()
    if not utf8(body):
        raise ApiError(400, "malformed_json", MALFORMED)
    try:
        return decoder.decode(body or b"null")
    except msgspec.ValidationError as exc:
        loc, msg = where(exc)
        raise invalid(loc, msg) from None
    except msgspec.DecodeError:
        raise ApiError(400, "malformed_json", MALFORMED) from None


def invalid(loc: list[str], msg: str, *, index: int | None = None) -> ApiError:
    """422 ``invalid_body``: ``msg`` about ``loc`` in the body (in its ``messages[index]``)."""
    if index is not None:
        loc = ["messages", str(index), *loc]
    msg = msg[:200]
    details = [{"loc": loc, "msg": msg}]
    return ApiError(422, "invalid_body", f"{'.'.join(loc)}: {msg}" if loc else msg, details=details)


_PUBLISH = msgspec.json.Decoder(PublishRequest)
_BATCH = msgspec.json.Decoder(BatchRequest)
_TOKEN = msgspec.json.Decoder(TokenRequest)


def create_app(node: Node) -> FastAPI:
    """The internal API of ``node``."""
    settings = node.settings
    docs = settings.docs or settings.dev
    app = DocumentedAPI(
        title="pushsvc internal API",
        version=__version__,
        description="Publish to patients' devices and inspect deliveries, sessions and nodes.",
        redirect_slashes=False,
        openapi_url="/openapi.json" if docs else None,
        pages=docs,
    )

    gate = Gate(KeyRing.parse(settings.api_key_entries()), node.broker.limits)
    keyed = [Depends(gate.dependency)]
    publishing = Publishing(node)
    app.include_router(_messages(node, publishing), dependencies=keyed)
    app.include_router(_cluster(node), dependencies=keyed)
    app.include_router(cluster_admin_routes(node.operations), dependencies=keyed)
    app.include_router(admin_routes(node.operations), dependencies=keyed)
    app.include_router(webhook_routes(node), dependencies=keyed)
    _operations(app, node)
    _error_answers(app)
    app.add_middleware(JsonGuard)
    app.add_middleware(BodyLimit, limit=settings.max_body_size)
    app.add_middleware(tracing.ServerSpans, routes=PUBLISH_ROUTES)
    app.add_middleware(PublishLane, publishing=publishing, gate=gate)
    return app


def _messages(node: Node, publishing: Publishing) -> APIRouter:
    settings = node.settings
    v1 = APIRouter(prefix="/v1", tags=["messages"])

    def outgoing(req: PublishRequest, index: int | None = None) -> Outgoing:
        try:
            return message(req, settings.default_ttl, settings.max_message_size)
        except DataTooLarge as exc:
            at = "" if index is None else f"messages[{index}]: "
            raise ApiError(413, "message_too_large", at + str(exc)) from None
        except Invalid as exc:
            raise invalid(exc.loc, exc.msg, index=index) from None

    async def run(request: Request, items: list[Outgoing], batch: bool) -> list[dict[str, Any]]:
        key: ApiKey = request.state.api_key  # admitted by the router's gate: the idempotency scope
        return [msgspec.to_builtins(r) for r in await publishing.run(items, key.name, batch)]

    @v1.post(
        "/messages", summary="Publish one message",
        **answers(202, PublishResult, *PUBLISH_ERRORS, body=PublishRequest),
    )  # fmt: skip
    async def publish(request: Request) -> dict[str, Any]:
        req = await parse(request, _PUBLISH)
        (result,) = await run(request, [outgoing(req)], batch=False)
        return result

    @v1.post(
        "/messages/batch", summary="Publish up to 1000 messages in order",
        **answers(202, BatchResult, *PUBLISH_ERRORS, body=BatchRequest),
    )  # fmt: skip
    async def publish_batch(request: Request) -> dict[str, Any]:
        req = await parse(request, _BATCH)
        items = [outgoing(m, i) for i, m in enumerate(req.messages)]
        return {"results": await run(request, items, batch=True)}

    @v1.get(
        "/messages/{message_id}", summary="A message's delivery trail",
        **answers(200, MessageTrail, 404, 503),
    )  # fmt: skip
    async def message_trail(message_id: str) -> dict[str, Any]:
        found = await node.broker.ledger.trail(message_id[:64])
        if found is None:
            raise ApiError(
                404, "not_found", f"no message {message_id[:64]!r} (or its trail expired)"
            )
        return {
            "id": found.id,
            "event": found.event,
            "published_at": found.published_at,
            "expires_at": found.expires_at,
            "ack": found.ack,
            "streams": found.streams,
            "state": trails.state(found, time.time()),
            "devices": _devices(found),
            "sent_by_node": found.sent_by_node,
        }

    return v1


def _devices(found: Trail) -> list[dict[str, Any]]:
    """The trail's device entries: one per session that got the message, each with the
    device's ``push_sent_at``; a device that was only pushed to has an entry of its own."""
    out: list[dict[str, Any]] = []
    for d in sorted(found.deliveries.values(), key=lambda d: d.sent_at or 0.0):
        user, device = split_device_key(d.device)
        out.append({
            "user": user, "device": device, "session": d.session, "node": d.node,
            "sent_at": d.sent_at, "acked_at": d.acked_at, "attempts": d.attempts,
            "push_sent_at": found.pushed.get(d.device),
        })  # fmt: skip
    seen = {d.device for d in found.deliveries.values()}
    for key, at in sorted(found.pushed.items()):
        if key not in seen:
            user, device = split_device_key(key)
            out.append({
                "user": user, "device": device, "session": None, "node": None, "sent_at": None,
                "acked_at": None, "attempts": 0, "push_sent_at": at,
            })  # fmt: skip
    return out


def _cluster(node: Node) -> APIRouter:
    settings = node.settings
    v1 = APIRouter(prefix="/v1", tags=["cluster"])

    @v1.post(
        "/tokens",
        summary="Mint a client token",
        **answers(200, TokenAnswer, *BODY, body=TokenRequest),
    )
    async def mint(request: Request) -> dict[str, Any]:
        req = await parse(request, _TOKEN)
        ttl = int(req.ttl or settings.token_ttl)
        try:
            token = node.tokens.mint(req.user, req.topics, ttl)
        except AuthError as exc:
            raise ApiError(422, exc.slug, exc.message) from None
        return {"token": token, "user": req.user, "topics": req.topics, "expires_in": ttl}

    @v1.get("/nodes", summary="Every live node of the cluster", **answers(200, NodeList, 503))
    async def nodes() -> dict[str, Any]:
        found = await node.broker.registry.nodes()
        return {"nodes": [msgspec.to_builtins(n) for n in sorted(found, key=lambda n: n.id)]}

    @v1.get("/sessions", summary="Sessions across all nodes", **answers(200, SessionList, 422, 503))
    async def sessions(
        user: str | None = None,
        node_id: Annotated[str | None, Query(alias="node")] = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    ) -> dict[str, Any]:
        found = {s.id: s for s in await node.broker.registry.sessions(user, node_id, limit)}
        if node_id in (None, node.id):  # this node's sessions with live counters
            for local in node.sessions.values():
                if (user is None or local.user == user) and (
                    local.id in found or len(found) < limit
                ):
                    found[local.id] = node.describe(local)
        listed = sorted(found.values(), key=lambda s: s.connected_at)[:limit]
        return {"sessions": [msgspec.to_builtins(s) for s in listed]}

    @v1.delete(
        "/sessions/{session_id}", summary="Close a session (4010)",
        **answers(202, SessionClosing, 404, *NO_BODY, 503),
    )  # fmt: skip
    async def kick(session_id: str) -> dict[str, Any]:
        holder = node.id if session_id in node.sessions else None
        if holder is None:
            info = await node.broker.registry.find_session(session_id[:64])
            holder = info.node if info is not None else None
            if holder == node.id:
                holder = None  # the registry lags a closed local session by one flush
        if holder is None:
            raise ApiError(404, "not_found", f"no open session {session_id[:64]!r}")
        await node.broker.bus.send_command(
            Command(kind="close_session", node=holder, session=session_id, code=4010)
        )
        return {"session": session_id, "node": holder, "closing": True}

    return v1


def _operations(app: FastAPI, node: Node) -> None:
    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        reasons = [
            reason
            for reason, bad in (
                ("broker_down", not node.broker.up),
                ("draining", node.leaving),
                ("not_started", not node.joined),
            )
            if bad
        ]
        body = {"status": "not_ready" if reasons else "ready", "node": node.id, "reasons": reasons}
        return JSONResponse(body, status_code=503 if reasons else 200)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


def _error_answers(app: DocumentedAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> Response:
        return answer(exc)

    @app.exception_handler(BrokerError)
    async def broker_error(_: Request, exc: BrokerError) -> Response:
        # the broker's own error text (Redis's) goes to the log, never to the caller
        log.warning("broker error", extra={"error": exc.message[:500]})
        return error_response(503, exc.slug, UNAVAILABLE + "; retry later")

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> Response:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return error_response(400, "malformed_json", MALFORMED)
        details = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))[:200]}
            for e in errors[:20]
        ]
        first = details[0] if details else {"loc": [], "msg": "invalid"}
        summary = f"{'.'.join(first['loc'])}: {first['msg']}"
        return error_response(422, "invalid_body", summary, details=details)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        slug = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        answer = error_response(exc.status_code, slug, str(exc.detail))
        if exc.status_code == 405:
            answer.headers["Allow"] = app.allowed_methods(request.url.path)
        return answer
