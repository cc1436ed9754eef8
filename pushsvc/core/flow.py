"""Flow control policies: a token bucket for inbound frames and the outbox's slow-consumer rule."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class TokenBucket:
    """``rate`` tokens per second up to ``burst``. :meth:`take` returns the seconds to wait
    before the next frame may be read (0.0 when one may be read now)."""

    rate: float
    burst: float
    tokens: float
    stamp: float

    @classmethod
    def full(cls, rate: float, burst: float, now: float) -> TokenBucket:
        return cls(rate, burst, burst, now)

    def take(self, now: float) -> float:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= 1.0
        if self.tokens >= 0:
            return 0.0
        return -self.tokens / self.rate


def slow_consumer(
    buffered: int, cap: int, over_since: float | None, grace: float, now: float
) -> bool:
    """True when a session must be closed with 4008.

    A session may go over ``cap`` bytes of unsent data for up to ``grace`` seconds (a burst on a
    slow network); it is closed when it stays over that long, or at once when it holds four times
    the cap.
    """
    if buffered > 4 * cap:
        return True
    return over_since is not None and buffered > cap and now - over_since >= grace


class PendingPerAddress:
    """Connections each source address holds open before their hello is accepted, at most
    ``limit`` at once: one address cannot fill a node with connections that never say hello.

    :meth:`enter` at the TCP accept (False: refuse the connection), :meth:`leave` once, when the
    hello is accepted or the connection ends before it.
    """

    __slots__ = ("counts", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.counts: dict[str, int] = {}

    def enter(self, address: str) -> bool:
        held = self.counts.get(address, 0)
        if held >= self.limit:
            return False
        self.counts[address] = held + 1
        return True

    def leave(self, address: str) -> None:
        held = self.counts.get(address, 0) - 1
        if held > 0:
            self.counts[address] = held
        else:
            self.counts.pop(address, None)
