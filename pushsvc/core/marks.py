"""Where a node's catch-up reads from: per stream, a position in the stream's own clock.

Offsets are stream ids, stamped by the broker that appends (Redis's clock, not a node's). A node
marks, per stream its sessions read, the newest offset that reached it (:meth:`StreamMarks.seen`,
from the bus) or, for a stream it had not heard of, the stream's end when a session started reading
it (:meth:`StreamMarks.start`). A catch-up reads each stream from its mark minus
:data:`MARGIN_MS` *of the stream's clock*: no node's wall clock takes part, so a node whose clock is
ahead of or behind Redis (or of the publishing node) skips nothing.

Calling contract: take a :meth:`snapshot` when a loss is noticed, before later envelopes move the
marks past what was lost, and read from :func:`read_after` of the snapshot's marks.
"""

from __future__ import annotations

from pushsvc.core.offsets import ZERO, Position

MARGIN_MS = 2000  # also re-read this much before the mark: envelopes of one stream published by
# two nodes can cross on the bus (append order is not publish order)


class StreamMarks:
    """stream → the position this node has everything up to (see the module docstring)."""

    __slots__ = ("_marks",)

    def __init__(self) -> None:
        self._marks: dict[str, Position] = {}

    def seen(self, stream: str, position: Position) -> None:
        """An envelope with ``position`` on ``stream`` arrived."""
        if position > self._marks.get(stream, ZERO):
            self._marks[stream] = position

    def start(self, stream: str, end: Position | None) -> None:
        """A session starts reading ``stream``, whose end is ``end`` (None: empty) right now."""
        if stream not in self._marks:
            self._marks[stream] = ZERO if end is None else end

    def knows(self, stream: str) -> bool:
        return stream in self._marks

    def get(self, stream: str) -> Position | None:
        """The mark of ``stream``, None when no local session reads it yet."""
        return self._marks.get(stream)

    def forget(self, stream: str) -> None:
        """No local session reads ``stream`` any more."""
        self._marks.pop(stream, None)

    def snapshot(self) -> dict[str, Position]:
        return dict(self._marks)

    def __len__(self) -> int:
        return len(self._marks)


def merge(
    pending: dict[str, Position] | None, snapshot: dict[str, Position]
) -> dict[str, Position]:
    """Two catch-up asks made one: per stream the earlier mark."""
    if pending is None:
        return snapshot
    merged = dict(snapshot)
    for stream, position in pending.items():
        known = merged.get(stream)
        if known is None or position < known:
            merged[stream] = position
    return merged


def read_after(mark: Position, margin_ms: int = MARGIN_MS) -> str:
    """The history offset to read a stream after: ``margin_ms`` of the stream's clock before
    ``mark``."""
    if mark == ZERO:
        return "0-0"
    return f"{max(0, mark[0] - margin_ms)}-0"
