"""Stream offsets: ``"<ms>-<seq>"``, the shape of a Redis Stream entry id.

Both brokers hand out offsets of this shape, so resume arithmetic is the same on both. Because the
first part is a wall-clock millisecond, offsets keep growing across a broker restart that lost the
history (the next append is later than anything a client holds).
"""

from __future__ import annotations

from pushsvc.errors import FrameError

Position = tuple[int, int]
ZERO: Position = (0, 0)
#: Each part of a Redis Stream id is an unsigned 64-bit number.
U64_MAX = (1 << 64) - 1


def parse(offset: str) -> Position:
    """Parse an offset; raise :class:`FrameError` (4003) when it is not ``<ms>-<seq>``."""
    ms, sep, seq = offset.partition("-")
    if not sep or not _digits(ms) or not _digits(seq) or len(offset) > 41:
        raise FrameError(f"invalid offset {offset[:48]!r}", slug="invalid_offset")
    return int(ms), int(seq)


def parse_or_none(offset: str) -> Position | None:
    """:func:`parse`, or None for callers that treat a malformed offset as opaque."""
    try:
        return parse(offset)
    except FrameError:
        return None


def _digits(text: str) -> bool:
    # str.isdigit alone accepts every Unicode digit ("٣", "²"), which int() may not read
    return text.isascii() and text.isdigit()


def clamp(position: Position, end: Position | None) -> Position:
    """A resume position no further than the stream's ``end`` (None: the stream is empty).

    A client may hold an offset beyond what the stream has (a history lost with its Redis, a forged
    resume); positions are compared to drop duplicates, so an unclamped one would drop every later
    message of the stream as already seen.
    """
    limit = ZERO if end is None else end
    return position if position <= limit else limit


def format_position(position: Position) -> str:
    return f"{position[0]}-{position[1]}"


def next_position(last: Position, now_ms: int) -> Position:
    """The position after ``last`` at ``now_ms``; monotonic even when the clock steps back."""
    if now_ms > last[0]:
        return (now_ms, 0)
    return (last[0], last[1] + 1)


def preceding(offset: str) -> str | None:
    """The offset right before ``offset`` (None: nothing precedes it), so a read of the entries
    after it begins exactly at ``offset``. Raises :class:`FrameError` when it is not an offset."""
    ms, seq = parse(offset)
    if seq > 0:
        return format_position((ms, seq - 1))
    if ms > 0:
        return format_position((ms - 1, U64_MAX))
    return None


def range_start(after: str | None) -> str | None:
    """The Redis ``XRANGE`` start of the entries after ``after`` (``"-"``: from the first);
    None when nothing can follow it. Raises :class:`FrameError` when it is not an offset."""
    if after is None:
        return "-"
    ms, seq = parse(after)
    if ms > U64_MAX or (ms == U64_MAX and seq >= U64_MAX):
        return None
    if seq >= U64_MAX:
        return f"{ms + 1}-0"
    return f"({ms}-{seq}"
