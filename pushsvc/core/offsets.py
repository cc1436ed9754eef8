"""Stream offsets: ``"<ms>-<seq>"``, the shape of a Redis Stream entry id.

Both brokers hand out offsets of this shape, so resume arithmetic is the same on both. Because the
first part is a wall-clock millisecond, offsets keep growing across a broker restart that lost the
history (the next append is later than anything a client holds).
"""

from __future__ import annotations

from pushsvc.errors import FrameError

Position = tuple[int, int]
ZERO: Position = (0, 0)


def parse(offset: str) -> Position:
    """Parse an offset; raise :class:`FrameError` (4003) when it is not ``<ms>-<seq>``."""
    ms, sep, seq = offset.partition("-")
    if not sep or not ms.isdigit() or not seq.isdigit() or len(offset) > 41:
        raise FrameError(f"invalid offset {offset[:48]!r}", slug="invalid_offset")
    return int(ms), int(seq)


def format_position(position: Position) -> str:
    return f"{position[0]}-{position[1]}"


def next_position(last: Position, now_ms: int) -> Position:
    """The position after ``last`` at ``now_ms``; monotonic even when the clock steps back."""
    if now_ms > last[0]:
        return (now_ms, 0)
    return (last[0], last[1] + 1)
