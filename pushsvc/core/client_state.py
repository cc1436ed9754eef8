"""A client's pure state: offsets per stream, the dedupe window, what to resume.

Used by :mod:`pushsvc.client`; no I/O, tested with tables (tests/test_client_unit.py).
"""

from __future__ import annotations

from collections.abc import Mapping

from pushsvc.core import offsets
from pushsvc.core.frames import MAX_RESUME

#: The most streams a hello's ``resume`` may name (every stream one token can read).
RESUME_LIMIT = MAX_RESUME


#: ``"<ms>-<seq>"`` as a comparable pair, or None when the offset has another shape.
parse_offset = offsets.parse_or_none


def offset_after(new: str, old: str | None) -> bool:
    """True when ``new`` is later than ``old`` in the same stream.

    Offsets are compared as ``(ms, seq)`` pairs. If either does not parse, the offsets are opaque
    and the newer arrival wins whenever it differs.
    """
    if old is None:
        return True
    a, b = parse_offset(new), parse_offset(old)
    if a is None or b is None:
        return new != old
    return a > b


def resume_for(offsets: Mapping[str, str], limit: int = RESUME_LIMIT) -> dict[str, str]:
    """The ``resume`` map for a hello: at most ``limit`` streams (the server refuses more).

    When there are more, ``user:*`` and ``all`` are kept first (they hold what is addressed to the
    patient), then the streams with the most recent offsets.
    """
    if len(offsets) <= limit:
        return dict(offsets)

    def rank(item: tuple[str, str]) -> tuple[int, tuple[int, int]]:
        stream, offset = item
        mine = stream.startswith("user:") or stream == "all"
        ms, seq = parse_offset(offset) or (-1, -1)
        return (0 if mine else 1, (-ms, -seq))

    return dict(sorted(offsets.items(), key=rank)[:limit])


class StreamOffsets:
    """The highest offset seen per stream; what the client sends as ``resume``."""

    def __init__(self, initial: Mapping[str, str] | None = None) -> None:
        self._latest: dict[str, str] = dict(initial or {})

    def observe(self, stream: str, offset: str) -> bool:
        """Record ``offset`` for ``stream``; True if it moved the stream forward."""
        if offset_after(offset, self._latest.get(stream)):
            self._latest[stream] = offset
            return True
        return False

    def snapshot(self) -> dict[str, str]:
        """A copy, safe to keep or mutate."""
        return dict(self._latest)


class DedupeWindow:
    """The last ``capacity`` message ids seen, oldest forgotten first, each with an acked flag."""

    def __init__(self, capacity: int = 10_000) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._acked: dict[str, bool] = {}  # insertion-ordered: the first key is the oldest

    def __contains__(self, msg_id: object) -> bool:
        return msg_id in self._acked

    def __len__(self) -> int:
        return len(self._acked)

    def add(self, msg_id: str) -> bool:
        """Remember ``msg_id``; False (and nothing changes) if it is already in the window."""
        if msg_id in self._acked:
            return False
        if len(self._acked) >= self.capacity:
            del self._acked[next(iter(self._acked))]
        self._acked[msg_id] = False
        return True

    def mark_acked(self, msg_id: str) -> None:
        """Note that ``msg_id`` was acked; a no-op for ids outside the window."""
        if msg_id in self._acked:
            self._acked[msg_id] = True

    def is_acked(self, msg_id: str) -> bool:
        return self._acked.get(msg_id, False)
