"""What a connecting session is sent before it goes live (resume, offline inbox: docs/protocol.md).

For each stream the session reads:
- with a resume offset: every unexpired entry after it; on the user stream also every entry at or
  before it that asked for an ack and that this device has not acked (an ack lost with the old
  connection);
- without one, on the user stream: every unexpired entry that asked for an ack and that this device
  has not acked (the offline inbox);
- without one, on a topic or ``all``: nothing (they are live boards).

``ack: false`` messages are live and resumable, but not kept in the inbox of a device that never
saw them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from pushsvc.core import offsets
from pushsvc.core.clock import expired
from pushsvc.core.streams import is_user_stream
from pushsvc.types import HistoryEntry


def select(
    stream: str,
    entries: Iterable[HistoryEntry],
    resume: str | None,
    acked_by_device: Callable[[str], bool],
    now_ms: int,
) -> list[HistoryEntry]:
    """The entries of ``stream`` (in offset order) to replay to a connecting session; ``now_ms``
    is in the stream's clock (:mod:`pushsvc.core.clock`)."""
    user = is_user_stream(stream)
    if resume is None and not user:
        return []
    after = offsets.parse(resume) if resume is not None else None
    chosen = []
    for entry in entries:
        message = entry.message
        position = offsets.parse(entry.offset)
        if expired(message, position, now_ms):
            continue
        if after is not None and position > after:
            chosen.append(entry)
        elif user and message.ack and not acked_by_device(message.id):
            chosen.append(entry)
    return chosen
