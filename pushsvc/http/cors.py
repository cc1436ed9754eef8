"""CORS on the client listener's public files: the answer headers a request's ``Origin`` earns.

``PUSHSVC_CORS_ORIGINS`` lets a page of another site fetch the browser client
(``/client/pushsvc.js``, its ``.d.ts``) and the VAPID public key (``/client/push-key``) it asks for
before subscribing. A plain ``<script src>`` needs no CORS at all; ``<script type="module">`` from
another origin, ``import()`` and ``fetch()`` do. It is *not* the WebSocket Origin check
(``PUSHSVC_ALLOWED_ORIGINS``): that one refuses upgrades, this one only adds headers that let a
browser hand a response to a page; leaving it empty changes no answer.

The service worker (``/client/pushsvc-sw.js``) gets no CORS headers: a browser registers a service
worker only from the page's own origin, whatever the headers, so a site that wants Web Push serves
its own copy. Pure: no I/O, tested with tables.
"""

from __future__ import annotations

from pushsvc.core.handshake import normal_origin

#: The paths another origin may read when its origin is listed.
CORS_PATHS = frozenset({"/client/pushsvc.js", "/client/pushsvc.d.ts", "/client/push-key"})
ANY = b"*"
_VARY = b"Vary: Origin\r\n"
PREFLIGHT_MAX_AGE = 600  # seconds a browser may cache a preflight answer


def cors_headers(origin: bytes | None, allowed: frozenset[bytes]) -> bytes:
    """Header lines (CRLF-terminated) for a GET or HEAD of a :data:`CORS_PATHS` file.

    ``allowed`` holds normalized origins (:func:`~pushsvc.core.handshake.normal_origin`) or only
    ``*``. Empty: nothing. A listed ``origin`` is echoed in ``Access-Control-Allow-Origin`` as
    configured (never the raw request bytes); ``Vary: Origin`` is sent whether it is listed or
    not, so a shared cache never hands one origin's answer to another.
    """
    if not allowed:
        return b""
    if allowed == {ANY}:
        return b"Access-Control-Allow-Origin: *\r\n"
    if origin is not None and (match := normal_origin(origin)) in allowed:
        return b"Access-Control-Allow-Origin: %s\r\n" % match + _VARY
    return _VARY


def preflight_headers(
    origin: bytes | None, method: bytes | None, allowed: frozenset[bytes]
) -> bytes:
    """Header lines for an ``OPTIONS`` preflight of a :data:`CORS_PATHS` file: the allowance
    only when ``origin`` may read it and asks for GET or HEAD (``method``, from
    ``Access-Control-Request-Method``); no request header is allowed beyond the safelisted ones."""
    grant = cors_headers(origin, allowed)
    if b"Access-Control-Allow-Origin" not in grant or method not in (b"GET", b"HEAD"):
        return _VARY if allowed != {ANY} else b""
    return grant + b"Access-Control-Allow-Methods: GET, HEAD\r\nAccess-Control-Max-Age: %d\r\n" % (
        PREFLIGHT_MAX_AGE
    )
