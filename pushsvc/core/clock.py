"""Expiry judged in the broker's clock, not in a node's.

A message's ``expires`` is stamped by the node that published it; its offsets by the broker that
appended it (Redis's clock). Comparing ``expires`` with another node's wall clock expires messages
early (or late) by however far the two clocks disagree. Instead a message's life is measured from
its offset: it expires ``ttl`` after it was appended, in the stream's clock, and "now" in the
stream's clock is this node's clock corrected by the difference seen on the bus
(:meth:`StreamClock.observe`: an envelope's offset against its arrival here; the error is the bus
latency, milliseconds). Until the first envelope arrives the correction is 0.
"""

from __future__ import annotations

from pushsvc.core.offsets import Position
from pushsvc.types import Message


class StreamClock:
    """This node's estimate of the streams' clock (see the module docstring)."""

    __slots__ = ("skew_ms",)

    def __init__(self) -> None:
        self.skew_ms = 0  # the streams' clock minus this node's

    def observe(self, appended: Position, arrived_ms: int) -> None:
        """A live envelope appended at ``appended`` (its offset) arrived at ``arrived_ms``."""
        self.skew_ms = appended[0] - arrived_ms

    def now(self, local_ms: int) -> int:
        """The streams' clock when this node's reads ``local_ms``."""
        return local_ms + self.skew_ms


def expired(message: Message, appended: Position, stream_now_ms: int) -> bool:
    """True when ``message``, appended at ``appended``, has outlived its ttl at ``stream_now_ms``
    (both in the stream's clock). The ttl is ``expires - ts``: one node stamped both."""
    return appended[0] + (message.expires - message.ts) <= stream_now_ms
