"""A minimal WebSocket client protocol core for load generation (RFC 6455), with no I/O.

Bytes go in with :meth:`ClientCodec.feed`, which returns the complete frames received so far;
bytes to send come from :func:`handshake_request` and :func:`encode_frame`. The load worker
(``bench.wsload``) is the only pump around it. Only what a push client needs is here: the upgrade
handshake, masked client frames, unmasked server frames of any length (7-bit, 16-bit and 64-bit
lengths), and continuation frames. No extensions are negotiated.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONT: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA

MAX_FRAME: Final = 16 * 1024 * 1024


class WsProtocolError(Exception):
    """The server sent bytes that are not a valid WebSocket handshake or frame stream."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where to connect: host, port and request path of a ``ws://`` URL."""

    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, url: str) -> Target:
        parts = urlsplit(url)
        if parts.scheme != "ws" or parts.hostname is None:
            raise ValueError(f"only ws:// URLs are supported, got {url!r}")
        path = parts.path or "/"
        if parts.query:
            path = f"{path}?{parts.query}"
        return cls(parts.hostname, parts.port or 80, path)


def new_key() -> bytes:
    """A fresh ``Sec-WebSocket-Key`` value."""
    return base64.b64encode(os.urandom(16))


def accept_for(key: bytes) -> bytes:
    """The ``Sec-WebSocket-Accept`` value a server must answer to ``key``."""
    return base64.b64encode(hashlib.sha1(key + GUID, usedforsecurity=False).digest())


def handshake_request(target: Target, key: bytes) -> bytes:
    """The HTTP/1.1 upgrade request for ``target``."""
    return (
        f"GET {target.path} HTTP/1.1\r\n"
        f"Host: {target.host}:{target.port}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key.decode()}\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        "\r\n"
    ).encode()


def parse_handshake_response(head: bytes, key: bytes) -> None:
    """Check the response head (without the blank line); raise :class:`WsProtocolError` if bad."""
    lines = head.split(b"\r\n")
    status = lines[0].split(b" ", 2)
    if len(status) < 2 or status[1] != b"101":
        raise WsProtocolError(f"handshake status {lines[0][:80]!r}")
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if headers.get(b"sec-websocket-accept") != accept_for(key):
        raise WsProtocolError("bad Sec-WebSocket-Accept")


def mask_payload(payload: bytes, mask: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte ``mask`` repeated (RFC 6455 §5.3)."""
    n = len(payload)
    if n == 0:
        return payload
    repeated = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(n, "big")


def encode_frame(opcode: int, payload: bytes, mask: bytes | None = None) -> bytes:
    """One final, masked client frame. ``mask`` is random unless given (tests pass one)."""
    if mask is None:
        mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 1 << 16:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    return head + mask + mask_payload(payload, mask)


def close_payload(data: bytes) -> int:
    """The status code carried by a close frame payload (1005 when there is none)."""
    if len(data) >= 2:
        return int.from_bytes(data[:2], "big")
    return 1005


class ClientCodec:
    """Incremental parser of the frames a server sends (unmasked)."""

    __slots__ = ("_buf", "_frag", "_frag_op")

    def __init__(self) -> None:
        self._buf = b""
        self._frag: list[bytes] = []
        self._frag_op = 0

    @property
    def idle(self) -> bool:
        """True when no partial frame or fragmented message is buffered."""
        return not self._buf and not self._frag

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Add received bytes; return the complete messages as ``(opcode, payload)``.

        Fragmented data messages are returned once, reassembled, with their first opcode;
        control frames may arrive in between and are returned as they come.
        """
        buf = self._buf + data if self._buf else data
        out: list[tuple[int, bytes]] = []
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            if b1 & 0x80:
                raise WsProtocolError("server frame is masked")
            if b0 & 0x70:
                raise WsProtocolError("reserved bits set (no extension was negotiated)")
            n = b1 & 0x7F
            start = pos + 2
            if n == 126:
                if end - pos < 4:
                    break
                n = int.from_bytes(buf[start : start + 2], "big")
                start += 2
            elif n == 127:
                if end - pos < 10:
                    break
                n = int.from_bytes(buf[start : start + 8], "big")
                start += 8
            if n > MAX_FRAME:
                raise WsProtocolError(f"frame of {n} bytes")
            if end - start < n:
                break
            payload = buf[start : start + n]
            pos = start + n
            opcode = b0 & 0x0F
            fin = b0 & 0x80
            if opcode >= OP_CLOSE:
                out.append((opcode, payload))
            elif opcode == OP_CONT:
                if not self._frag:
                    raise WsProtocolError("continuation without a first fragment")
                self._frag.append(payload)
                if fin:
                    out.append((self._frag_op, b"".join(self._frag)))
                    self._frag = []
            elif fin:
                out.append((opcode, payload))
            else:
                self._frag = [payload]
                self._frag_op = opcode
        self._buf = buf[pos:] if pos < end else b""
        return out
