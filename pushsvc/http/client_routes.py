"""Plain HTTP on the client listener: health, the browser client, the demo page.

``/healthz`` · ``/client/push-key`` (the VAPID public key, JSON) · the files of :data:`STATIC_FILES`
and nothing else of ``static_dir``: the browser client (``/client/pushsvc.js``, ``.d.ts``) and the
demo page (``/demo/``). The client's files and the push key carry CORS headers for the origins of
``PUSHSVC_CORS_ORIGINS`` (:mod:`pushsvc.http.cors`), which then also answers their preflights.
In dev mode only (``pushsvc serve --dev``, loopback only) the demo page's two helpers exist:
``POST /demo/api/token`` and ``POST /demo/api/publish``. Every answer closes its connection;
``/ws`` itself is the WebSocket upgrade, handled by :mod:`pushsvc.http.client_listener`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import httptools
import msgspec
import orjson

from pushsvc.errors import AuthError, BrokerError, PublishError, error_body
from pushsvc.http import jsonguard
from pushsvc.http.bodies import PublishRequest, TokenRequest, message, utf8
from pushsvc.http.cors import CORS_PATHS, cors_headers, preflight_headers
from pushsvc.node.publish import Publisher

if TYPE_CHECKING:
    from pushsvc.http.client_listener import HttpEdge
    from pushsvc.node.gateway import Node

log = logging.getLogger(__name__)
JSON = b"application/json"
_token = msgspec.json.Decoder(TokenRequest).decode
_publish = msgspec.json.Decoder(PublishRequest).decode


class ClientRoutes:
    def __init__(self, node: Node) -> None:
        self._node = node
        self._publisher = Publisher(node)

    def handle(self, edge: HttpEdge, method: bytes, url: bytes, body: bytes) -> None:
        path = httptools.parse_url(url).path.decode("latin-1")
        if path == "/healthz" and method in (b"GET", b"HEAD"):
            edge.http_answer(200, JSON, b'{"status":"ok"}')
        elif path == "/client/push-key" and method in (b"GET", b"HEAD"):
            self._push_key(edge)
        elif path in ("/", "/demo"):
            edge.http_answer(200, b"text/html; charset=utf-8", _REDIRECT)
        elif path.startswith("/demo/api/"):
            if not self._node.settings.dev:
                edge.http_answer(404, JSON, error_body("not_found", "demo API is dev-only"))
            elif method != b"POST":
                refusal = error_body("method_not_allowed", "use POST")
                edge.http_answer(405, JSON, refusal, allow=b"POST")
            else:
                self._node.spawn(self._demo(edge, path, body))
        elif method == b"OPTIONS" and path in CORS_PATHS and self._node.settings.cors:
            self._preflight(edge)
        elif method not in (b"GET", b"HEAD"):
            edge.http_answer(
                405, JSON, error_body("method_not_allowed", "use GET"), allow=b"GET, HEAD"
            )
        elif path in STATIC_FILES:
            self._static(edge, path)
        else:
            edge.http_answer(404, JSON, error_body("not_found", f"no route for {path[:100]}"))

    def _push_key(self, edge: HttpEdge) -> None:
        """The VAPID public key a page subscribes with (``applicationServerKey``)."""
        vapid = self._node.escalator.vapid
        cors = self._cors(edge)
        if vapid is None:
            message = "Web Push is not configured on this server (PUSHSVC_VAPID_PRIVATE_KEY)"
            edge.http_answer(404, JSON, error_body("push_unavailable", message), extra=cors)
        else:
            body = orjson.dumps({"publicKey": vapid.public_key})
            edge.http_answer(200, JSON, body, extra=cors)

    def _cors(self, edge: HttpEdge) -> bytes:
        return cors_headers(edge.headers.get(b"origin"), self._node.settings.cors)

    def _preflight(self, edge: HttpEdge) -> None:
        """A CORS preflight (only asked for when a page adds a header or a method that is not
        CORS-safelisted; a ``<script>``, ``import()`` or plain ``fetch()`` never needs one)."""
        grant = preflight_headers(
            edge.headers.get(b"origin"),
            edge.headers.get(b"access-control-request-method"),
            self._node.settings.cors,
        )
        edge.http_answer(200, b"text/plain", b"", allow=b"GET, HEAD, OPTIONS", extra=grant)

    def _static(self, edge: HttpEdge, path: str) -> None:
        target = self._node.settings.static_dir / STATIC_FILES[path]
        try:
            body = target.read_bytes()
        except OSError:
            edge.http_answer(404, JSON, error_body("not_found", "no such file"))
            return
        cors = self._cors(edge) if path in CORS_PATHS else b""
        edge.http_answer(200, _TYPES[target.suffix].encode(), body, extra=cors)

    async def _demo(self, edge: HttpEdge, path: str, body: bytes) -> None:
        node = self._node
        refusal = jsonguard.problem(body) or (None if utf8(body) else "the body is not UTF-8")
        if refusal is not None:  # as the internal API: too deep, NaN or infinite
            edge.http_answer(422, JSON, error_body("invalid_body", refusal))
            return
        try:
            if path == "/demo/api/token":
                req = _token(body or b"{}")
                ttl = int(req.ttl or node.settings.token_ttl)
                token = node.tokens.mint(req.user, req.topics, ttl)
                edge.http_answer(200, JSON, orjson.dumps({"token": token, "user": req.user}))
            elif path == "/demo/api/publish":
                pub = _publish(body or b"{}")
                item = message(pub, node.settings.default_ttl, node.settings.max_message_size)
                (result,) = await self._publisher.publish([item])
                edge.http_answer(202, JSON, msgspec.json.encode(result))
            else:
                edge.http_answer(404, JSON, error_body("not_found", "no such demo endpoint"))
        except (msgspec.DecodeError, ValueError) as exc:
            edge.http_answer(422, JSON, error_body("invalid_body", str(exc)[:500]))
        except AuthError as exc:
            edge.http_answer(422, JSON, error_body(exc.slug, exc.message))
        except BrokerError as exc:
            edge.http_answer(503, JSON, error_body(exc.slug, "the broker is unavailable"))
        except PublishError as exc:
            edge.http_answer(409, JSON, error_body(exc.slug, exc.message))


#: The only files the client listener serves: URL path -> file under ``static_dir``.
STATIC_FILES = {
    "/client/pushsvc.js": "pushsvc.js",
    "/client/pushsvc.d.ts": "pushsvc.d.ts",
    "/client/pushsvc-sw.js": "pushsvc-sw.js",  # the Web Push service worker, when shipped
    "/demo/": "demo/index.html",
    "/demo/index.html": "demo/index.html",
    "/demo/demo.js": "demo/demo.js",
    "/demo/demo.css": "demo/demo.css",
    "/demo/manifest.webmanifest": "demo/manifest.webmanifest",
}
_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".ts": "text/plain; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".webmanifest": "application/manifest+json",
}
_REDIRECT = (
    b'<!doctype html><meta charset="utf-8"><meta http-equiv="refresh" content="0; url=/demo/">'
    b'<title>pushsvc</title><a href="/demo/">pushsvc demo</a>'
)
