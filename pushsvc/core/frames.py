"""The wire protocol's frames (docs/protocol.md), decoded in one place and encoded once.

Client frames are decoded with :func:`decode_client_frame`, which returns one of the typed structs
or raises :class:`FrameError` carrying the close code, whatever the bytes (nesting too deep for
the decoder included). Server frames are encoded to JSON bytes by
the ``encode_*`` functions; :func:`ws_text_frame` wraps a payload into an unmasked WebSocket text
frame so that a broadcast is framed once per node and written as-is to every socket.
"""

from __future__ import annotations

import struct
from typing import Annotated

import msgspec

from pushsvc.core.streams import MAX_TOPICS
from pushsvc.errors import FrameError

MAX_IDS = 1000
MAX_RESUME = MAX_TOPICS + 2  # every stream a session can read

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Token = Annotated[str, msgspec.Meta(min_length=1, max_length=8192)]
Device = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


class Hello(msgspec.Struct, tag="hello", tag_field="type"):
    token: Token
    device: Device | None = None
    resume: Annotated[dict[str, str], msgspec.Meta(max_length=MAX_RESUME)] = {}


class Ack(msgspec.Struct, tag="ack", tag_field="type"):
    ids: Annotated[list[Id], msgspec.Meta(max_length=MAX_IDS)]


class Ping(msgspec.Struct, tag="ping", tag_field="type"):
    pass


class Pong(msgspec.Struct, tag="pong", tag_field="type"):
    pass


class PushKeys(msgspec.Struct):
    p256dh: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    auth: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class PushSubscription(msgspec.Struct):
    """A browser's ``PushSubscription.toJSON()`` (other fields, like ``expirationTime``, are
    ignored)."""

    endpoint: Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]
    keys: PushKeys


class PushSubscribe(msgspec.Struct, tag="push_subscribe", tag_field="type"):
    subscription: PushSubscription


class PushUnsubscribe(msgspec.Struct, tag="push_unsubscribe", tag_field="type"):
    pass


class Refresh(msgspec.Struct, tag="refresh", tag_field="type"):
    token: Token


ClientFrame = Hello | Ack | Ping | Pong | Refresh | PushSubscribe | PushUnsubscribe
KNOWN_TYPES = ("hello", "ack", "ping", "pong", "refresh", "push_subscribe", "push_unsubscribe")

_decoder = msgspec.json.Decoder(ClientFrame)
_any = msgspec.json.Decoder()


def decode_client_frame(data: bytes | bytearray | memoryview | str) -> ClientFrame:
    """Decode one client frame; raise :class:`FrameError` (close 4003) saying what is wrong."""
    try:
        frame: ClientFrame = _decoder.decode(data)
    except UnicodeDecodeError:
        raise FrameError("frame is not valid UTF-8", slug="malformed_json") from None
    except RecursionError:
        raise FrameError("frame is nested too deeply", slug="nested_too_deep") from None
    except msgspec.DecodeError as exc:
        raise _explain(data, exc) from None
    return frame


def _explain(data: bytes | bytearray | memoryview | str, exc: msgspec.DecodeError) -> FrameError:
    # The error path only: find out which of the usual mistakes this is.
    try:
        value = _any.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return FrameError("frame is not valid JSON", slug="malformed_json")
    except RecursionError:
        return FrameError("frame is nested too deeply", slug="nested_too_deep")
    if not isinstance(value, dict):
        return FrameError("frame must be a JSON object", slug="not_an_object")
    kind = value.get("type")
    if kind not in KNOWN_TYPES:
        return FrameError(f"unknown frame type {str(kind)[:32]!r}", slug="unknown_frame_type")
    return FrameError(f"invalid {kind} frame: {exc}", slug="invalid_frame")


class _Welcome(msgspec.Struct, tag="welcome", tag_field="type"):
    session: str
    node: str
    user: str
    heartbeat: float
    replayed: int


class _Msg(msgspec.Struct, tag="msg", tag_field="type"):
    id: str
    stream: str
    offset: str
    event: str
    data: msgspec.Raw
    ts: int
    ack: bool
    replay: bool


class _Error(msgspec.Struct, tag="error", tag_field="type"):
    code: str
    message: str


class _Refreshed(msgspec.Struct, tag="refreshed", tag_field="type"):
    exp: int


_encoder = msgspec.json.Encoder()

PING = b'{"type":"ping"}'
PONG = b'{"type":"pong"}'
PUSH_SUBSCRIBED = b'{"type":"push_subscribed"}'


def encode_welcome(session: str, node: str, user: str, heartbeat: float, replayed: int) -> bytes:
    return _encoder.encode(_Welcome(session, node, user, heartbeat, replayed))


def encode_msg(
    id: str,
    stream: str,
    offset: str,
    event: str,
    data: msgspec.Raw,
    ts: int,
    ack: bool,
    replay: bool,
) -> bytes:
    return _encoder.encode(_Msg(id, stream, offset, event, data, ts, ack, replay))


def encode_error(code: str, message: str) -> bytes:
    return _encoder.encode(_Error(code, message))


def encode_refreshed(exp: int) -> bytes:
    return _encoder.encode(_Refreshed(exp))


def ws_text_frame(payload: bytes) -> bytes:
    """An unmasked, final WebSocket text frame (RFC 6455 §5.2) carrying ``payload``."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 1 << 16:
        return struct.pack("!BBH", 0x81, 126, n) + payload
    return struct.pack("!BBQ", 0x81, 127, n) + payload
