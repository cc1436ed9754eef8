"""Plain HTTP on the client listener: health, the browser client, the demo page.

``/healthz`` · ``/client/push-key`` (the VAPID public key) · ``/client/pushsvc.js`` (and
``.d.ts``) · ``/demo/…`` (static files of
``clients/js/demo``). In dev mode only (``pushsvc serve --dev``) the demo page's two helpers exist:
``POST /demo/api/token`` and ``POST /demo/api/publish``. Every answer closes its connection;
``/ws`` itself is the WebSocket upgrade handled by :mod:`pushsvc.node.session`.
"""

from __future__ import annotations

import logging
import mimetypes
from pathlib import Path
from typing import TYPE_CHECKING

import httptools
import msgspec
import orjson
from pydantic import ValidationError

from pushsvc.errors import AuthError, BrokerError, PublishError
from pushsvc.http.models import PublishRequest, TokenRequest
from pushsvc.node.publish import Publisher

if TYPE_CHECKING:
    from pushsvc.node.gateway import Node
    from pushsvc.node.session import Session

log = logging.getLogger(__name__)
JSON = b"application/json"


def error_body(code: str, message: str) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message}})


class ClientRoutes:
    def __init__(self, node: Node) -> None:
        self._node = node
        self._publisher = Publisher(node)

    def handle(self, session: Session, method: bytes, url: bytes, body: bytes) -> None:
        path = httptools.parse_url(url).path.decode("latin-1")
        if path == "/healthz" and method in (b"GET", b"HEAD"):
            session.http_answer(200, JSON, b'{"status":"ok"}')
        elif path == "/client/push-key" and method in (b"GET", b"HEAD"):
            self._push_key(session)
        elif path in ("/", "/demo"):
            session.http_answer(200, b"text/html; charset=utf-8", _REDIRECT)
        elif path.startswith("/demo/api/"):
            if not self._node.settings.dev:
                session.http_answer(404, JSON, error_body("not_found", "demo API is dev-only"))
            elif method != b"POST":
                session.http_answer(405, JSON, error_body("method_not_allowed", "use POST"))
            else:
                self._node.spawn(self._demo(session, path, body))
        elif method not in (b"GET", b"HEAD"):
            session.http_answer(405, JSON, error_body("method_not_allowed", "use GET"))
        elif path.startswith("/client/"):
            self._static(session, "", path.removeprefix("/client/"))
        elif path.startswith("/demo/"):
            self._static(session, "demo", path.removeprefix("/demo/") or "index.html")
        else:
            session.http_answer(404, JSON, error_body("not_found", f"no route for {path[:100]}"))

    def _push_key(self, session: Session) -> None:
        """The VAPID public key a page subscribes with (``applicationServerKey``)."""
        vapid = self._node.escalator.vapid
        if vapid is None:
            message = "Web Push is not configured on this server (PUSHSVC_VAPID_PRIVATE_KEY)"
            session.http_answer(404, JSON, error_body("push_unavailable", message))
        else:
            session.http_answer(200, JSON, orjson.dumps({"publicKey": vapid.public_key}))

    def _static(self, session: Session, folder: str, name: str) -> None:
        root = (self._node.settings.static_dir / folder).resolve()
        target = (root / name).resolve()
        if not target.is_relative_to(root) or not target.is_file() or name.startswith("test"):
            session.http_answer(404, JSON, error_body("not_found", "no such file"))
            return
        kind = _TYPES.get(target.suffix) or mimetypes.guess_type(target.name)[0] or "text/plain"
        session.http_answer(200, kind.encode(), Path(target).read_bytes())

    async def _demo(self, session: Session, path: str, body: bytes) -> None:
        node = self._node
        try:
            if path == "/demo/api/token":
                req = TokenRequest.model_validate_json(body or b"{}")
                token = node.tokens.mint(req.user, req.topics, req.ttl or node.settings.token_ttl)
                session.http_answer(200, JSON, orjson.dumps({"token": token, "user": req.user}))
            elif path == "/demo/api/publish":
                pub = PublishRequest.model_validate_json(body or b"{}")
                item = pub.outgoing(node.settings.default_ttl, node.settings.max_message_size)
                (result,) = await self._publisher.publish([item])
                session.http_answer(202, JSON, msgspec.json.encode(result))
            else:
                session.http_answer(404, JSON, error_body("not_found", "no such demo endpoint"))
        except (ValidationError, ValueError) as exc:
            session.http_answer(422, JSON, error_body("invalid_body", str(exc)[:500]))
        except AuthError as exc:
            session.http_answer(422, JSON, error_body(exc.slug, exc.message))
        except BrokerError as exc:
            session.http_answer(503, JSON, error_body(exc.slug, exc.message))
        except PublishError as exc:
            session.http_answer(409, JSON, error_body(exc.slug, exc.message))


_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".ts": "text/plain; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".json": "application/json",
}
_REDIRECT = (
    b'<!doctype html><meta charset="utf-8"><meta http-equiv="refresh" content="0; url=/demo/">'
    b'<title>pushsvc</title><a href="/demo/">pushsvc demo</a>'
)
