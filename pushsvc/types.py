"""Value types shared by every layer: messages as stored and as carried on the bus.

``data`` is kept as raw JSON bytes (:class:`msgspec.Raw`) from the publish request to the socket:
it is encoded once when published and never re-encoded per stream or per connection.
"""

from __future__ import annotations

import msgspec

StreamName = str
Offset = str  # "<ms>-<seq>": opaque to clients, ordered within a stream (see core/offsets.py)
MessageId = str
SessionId = str
NodeId = str


class Message(msgspec.Struct, frozen=True, gc=False):
    """A published message, as appended to history and carried on the bus."""

    id: MessageId
    event: str
    data: msgspec.Raw
    ts: int  # unix ms when published
    ack: bool
    expires: int  # unix ms after which it is no longer delivered
    traceparent: str = ""


class Envelope(msgspec.Struct, frozen=True, gc=False):
    """What the bus carries: one message and its offset in a stream it was appended to.

    A live envelope (from the bus) names one stream, and ``after`` is the offset of the entry
    before it in that stream ("0-0" when it is the stream's first): a node whose newest offset
    of the stream is older than ``after`` missed envelopes of that stream and catches up from
    history. ``after`` is None for an envelope rebuilt from history during a catch-up.
    """

    message: Message
    offsets: dict[StreamName, Offset]
    origin: NodeId = ""
    after: Offset | None = None


class HistoryEntry(msgspec.Struct, frozen=True, gc=False):
    offset: Offset
    message: Message
