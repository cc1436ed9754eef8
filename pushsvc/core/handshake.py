"""The WebSocket opening handshake (RFC 6455 §4.2), as a pure function over request headers."""

from __future__ import annotations

import base64
import binascii
import hashlib

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class HandshakeRefused(Exception):
    """The request is not an acceptable WebSocket upgrade; ``status`` is the HTTP answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def normal_origin(origin: bytes) -> bytes:
    """An origin as compared: lower case, no trailing slash."""
    return origin.strip().lower().rstrip(b"/")


def accept_key(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + GUID).digest())  # noqa: S324 - RFC 6455 mandates SHA-1


def check_upgrade(
    method: bytes, headers: dict[bytes, bytes], origins: frozenset[bytes] = frozenset()
) -> bytes:
    """Validate an upgrade request (header names lower-cased); return the 101 response bytes.

    Raises :class:`HandshakeRefused` with 400 / 405 / 426 when the request cannot be upgraded,
    403 when ``origins`` is not empty and the ``Origin`` header is not one of them (compared
    without case and trailing slash). Extensions (permessage-deflate) are never negotiated.
    """
    if method != b"GET":
        raise HandshakeRefused(405, "WebSocket upgrade needs GET")
    if origins and normal_origin(headers.get(b"origin", b"")) not in origins:
        raise HandshakeRefused(403, "this Origin may not open a WebSocket here")
    if b"websocket" not in headers.get(b"upgrade", b"").lower():
        raise HandshakeRefused(426, "this endpoint speaks WebSocket only")
    if b"upgrade" not in headers.get(b"connection", b"").lower():
        raise HandshakeRefused(400, "Connection: Upgrade is missing")
    if headers.get(b"sec-websocket-version", b"").strip() != b"13":
        raise HandshakeRefused(426, "only WebSocket version 13 is supported")
    key = headers.get(b"sec-websocket-key", b"").strip()
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            raise HandshakeRefused(400, "Sec-WebSocket-Key must be 16 bytes, base64")
    except binascii.Error:
        raise HandshakeRefused(400, "Sec-WebSocket-Key is not base64") from None
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept_key(key) + b"\r\n\r\n"
    )
