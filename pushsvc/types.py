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
    """What the bus carries: one message and its offset in each stream it was appended to.

    ``seq`` numbers every envelope on the bus (1, 2, 3, …, cluster-wide): a node that sees a
    jump knows it missed envelopes and catches up from history. 0 means "not numbered" (an
    envelope rebuilt from history during a catch-up).
    """

    message: Message
    offsets: dict[StreamName, Offset]
    origin: NodeId = ""
    seq: int = 0


class HistoryEntry(msgspec.Struct, frozen=True, gc=False):
    offset: Offset
    message: Message
