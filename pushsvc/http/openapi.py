"""The internal API as an OpenAPI 3.1 document, and its documentation pages, served offline.

- :func:`answers` is what a route declares: its success status and schema, and every error
  status it can answer, each with the one error schema, ``ErrorAnswer``
  (``{"error": {...}}``, 422 included: not FastAPI's ``HTTPValidationError``).
- :class:`DocumentedAPI` serves ``/openapi.json``: FastAPI's document, with the request bodies
  the routes decode themselves (the msgspec schemas of :mod:`pushsvc.http.bodies`, which the
  publish lane decodes too) and the answers (the msgspec structs of :mod:`pushsvc.records` and
  :mod:`pushsvc.http.answers`) as components, and the ``bearer`` security scheme on
  every ``/v1`` operation. ``/docs`` (Swagger UI) and ``/redoc`` load their scripts and styles
  from the node itself (the files ship in the ``fastapi-offline`` wheel), never from a CDN: they
  work on a network with no way out.
- ``python -m pushsvc.http.openapi [FILE]`` writes the document (``docs/openapi.json`` is one,
  kept equal to the served one by ``tests/test_openapi.py``).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import fastapi_offline
import msgspec
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from starlette.routing import Route

from pushsvc.http import answers as answer_schemas
from pushsvc.http import bodies
from pushsvc.http.publishing import ApiError

SCHEMAS = "#/components/schemas/{model}"
_PARAMETER = re.compile(r"\\\{[^}]*\\\}")  # a path parameter, once escaped by re.escape
SECURITY: list[dict[str, list[str]]] = [{"bearer": []}]
ASSETS = Path(fastapi_offline.__file__).parent / "static"
#: The files /docs and /redoc load, served under /docs/assets/.
ASSET_FILES = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "redoc.standalone.js": "text/javascript; charset=utf-8",
    "favicon.png": "image/png",
}

#: The documentation pages reach nothing but the node, not even for ReDoc's Redocly logo.
OWN_ORIGIN_ONLY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline';"
    " img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:"
)

#: What each error status means, whichever route answers it.
ERRORS = {
    400: "`malformed_json`: the body is not JSON",
    401: "`unauthorized`: missing or wrong `Authorization: Bearer <api key>`",
    403: "`forbidden`: the API key may not do this",
    404: "`not_found`",
    409: "`idempotency_conflict`: the key was used for another request; nothing was published",
    413: "`body_too_large` or `message_too_large`",
    422: "`invalid_body`: the body or a query parameter is not valid; `details` says where",
    429: "`rate_limited`: too many publishes for this API key; retry after `Retry-After` seconds",
    503: "the broker is unavailable",
}
#: Every /v1 route can answer these.
V1 = (401, 403)
#: A route that parses a request body can answer these.
BODY = (400, 413, 422)
#: Any other route but a GET can answer these, when sent a body (too large; too deep, NaN).
NO_BODY = (413, 422)
_RETRY_AFTER = {
    "Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}
}


def answers(
    status: int,
    model: type[msgspec.Struct],
    *errors: int,
    body: type | None = None,
) -> dict[str, Any]:
    """Keyword arguments of a ``/v1`` route decorator: it answers ``status`` with ``model``, and
    each of ``errors`` (and 401, 403) with :class:`~pushsvc.records.ErrorAnswer` (``model``: a
    struct of :mod:`pushsvc.records` or :mod:`pushsvc.http.answers`). ``body``: the route decodes
    its request body itself (``pushsvc.http.internal.parse``) as this schema of
    :mod:`pushsvc.http.bodies`."""
    success = {
        "description": model.__doc__ or "success",
        "content": _json(answer_schemas.name(model)),
    }
    responses: dict[int | str, dict[str, Any]] = {status: success}
    for error in sorted({*V1, *errors}):
        responses[error] = {"description": ERRORS[error], "content": _json("ErrorAnswer")}
        if error == 429:
            responses[error]["headers"] = _RETRY_AFTER
    extra: dict[str, Any] = {}
    if body is not None:
        ref = {"$ref": SCHEMAS.format(model=body.__name__)}
        extra["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref}}}
    return {
        "status_code": status,
        "response_model": None,
        "responses": responses,
        "openapi_extra": extra,
    }


def _json(name: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": SCHEMAS.format(model=name)}}}


class DocumentedAPI(FastAPI):
    """A FastAPI app whose ``/openapi.json`` is :meth:`openapi` and whose ``/docs`` and
    ``/redoc`` pages (served only with ``pages``) need no network."""

    def __init__(self, *, pages: bool = True, **kwargs: Any) -> None:
        super().__init__(docs_url=None, redoc_url=None, **kwargs)
        self._methods: list[tuple[re.Pattern[str], set[str]]] | None = None
        if pages:  # /docs, /redoc and their assets
            self._pages()

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            document = super().openapi()
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            schemas.update(bodies.components())
            schemas.update(answer_schemas.components())
            for unused in ("HTTPValidationError", "ValidationError"):
                schemas.pop(unused, None)
            for path, operations in document["paths"].items():
                for operation in operations.values():
                    responses = operation["responses"]
                    if "HTTPValidationError" in json.dumps(responses.get("422", {})):
                        del responses["422"]  # a path parameter that takes any string
                    if path.startswith("/v1/"):  # whatever dependency checks the key
                        operation["security"] = SECURITY
            document["components"]["securitySchemes"] = {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "an API key of the node (PUSHSVC_API_KEYS)",
                }
            }
            self.openapi_schema = document
        return self.openapi_schema

    def allowed_methods(self, path: str) -> str:
        """The ``Allow`` header of a 405 for ``path``: every method some route takes there (the
        document's operations and the routes left out of it). As in OpenAPI, a path without
        parameters wins over templates: ``/v1/messages/batch`` is not a message id."""
        if self._methods is None:
            self._methods = [
                (_pattern(template), {method.upper() for method in operations})
                for template, operations in self.openapi()["paths"].items()
            ]
            self._methods += [
                (_pattern(route.path), route.methods)
                for route in self.routes
                if isinstance(route, Route) and route.methods
            ]
        matches = [(p.groups > 0, found) for p, found in self._methods if p.match(path)]
        concrete = any(not templated for templated, _ in matches)
        methods: set[str] = set()
        for templated, found in matches:
            if not (concrete and templated):
                methods |= found
        return ", ".join(sorted(methods))

    def _pages(self) -> None:
        @self.get("/docs", include_in_schema=False)
        async def swagger_ui(request: Request) -> HTMLResponse:
            root = request.scope.get("root_path", "")
            page = get_swagger_ui_html(
                openapi_url=f"{root}{self.openapi_url}",
                title=f"{self.title} - Swagger UI",
                swagger_js_url=f"{root}/docs/assets/swagger-ui-bundle.js",
                swagger_css_url=f"{root}/docs/assets/swagger-ui.css",
                swagger_favicon_url=f"{root}/docs/assets/favicon.png",
            )
            page.headers["Content-Security-Policy"] = OWN_ORIGIN_ONLY
            return page

        @self.get("/redoc", include_in_schema=False)
        async def redoc(request: Request) -> HTMLResponse:
            root = request.scope.get("root_path", "")
            page = get_redoc_html(
                openapi_url=f"{root}{self.openapi_url}",
                title=f"{self.title} - ReDoc",
                redoc_js_url=f"{root}/docs/assets/redoc.standalone.js",
                redoc_favicon_url=f"{root}/docs/assets/favicon.png",
                with_google_fonts=False,
            )
            page.headers["Content-Security-Policy"] = OWN_ORIGIN_ONLY
            return page

        @self.get("/docs/assets/{name}", include_in_schema=False)
        async def asset(name: str) -> FileResponse:
            kind = ASSET_FILES.get(name)
            if kind is None:
                raise ApiError(404, "not_found", f"no asset {name[:64]!r}")
            return FileResponse(ASSETS / name, media_type=kind)


def _pattern(template: str) -> re.Pattern[str]:
    """A pattern matching the paths of a route's ``template`` (``/v1/nodes/{node_id}/drain``)."""
    return re.compile(_PARAMETER.sub("([^/]+)", re.escape(template)) + r"\Z")


def main(argv: list[str]) -> int:
    """Write the internal API's OpenAPI document to ``argv[0]`` (stdout when not given)."""
    # imported here: pushsvc.http.internal imports this module
    from pushsvc.broker.memory import MemoryBroker  # noqa: PLC0415
    from pushsvc.http.internal import create_app  # noqa: PLC0415
    from pushsvc.node.gateway import Node  # noqa: PLC0415
    from pushsvc.settings import Settings  # noqa: PLC0415

    node = Node(Settings(node_id="openapi", api_keys=["-"]), MemoryBroker())
    text = dump(create_app(node).openapi())
    if argv:
        Path(argv[0]).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def dump(document: dict[str, Any]) -> str:
    """``document`` as the text of ``docs/openapi.json``."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
