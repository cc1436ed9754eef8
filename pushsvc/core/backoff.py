"""Reconnect delays: capped exponential backoff with full jitter.

Pure arithmetic, no I/O and no clock. The caller owns the attempt counter: it passes the number of
failed attempts since the last successful connection (0 for the first retry) and resets it to 0
once a connection is established again.

    ceiling(attempt) = min(cap, base * 2**attempt)
    delay(attempt)   = uniform(0, ceiling(attempt))

Full jitter spreads a crowd of clients that lost the same node over the whole window instead of
bringing them back in synchronised waves.
"""

from __future__ import annotations

import random
from collections.abc import Callable

#: Beyond this exponent ``base * 2**attempt`` exceeds any sensible cap; clamping keeps the float
#: arithmetic finite for callers that never reset their counter.
MAX_EXPONENT = 62


def backoff_ceiling(attempt: int, base: float, cap: float) -> float:
    """Upper bound of the delay before retry number ``attempt`` (0-based).

    ``attempt`` must be >= 0, ``base`` and ``cap`` must be >= 0; otherwise ``ValueError``.
    """
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, got {attempt}")
    if base < 0 or cap < 0:
        raise ValueError(f"base and cap must be >= 0, got base={base} cap={cap}")
    return min(cap, base * float(2 ** min(attempt, MAX_EXPONENT)))


def backoff_delay(
    attempt: int,
    base: float,
    cap: float,
    uniform: Callable[[float, float], float] = random.uniform,
) -> float:
    """Seconds to sleep before retry number ``attempt``: ``uniform(0, backoff_ceiling(...))``.

    ``uniform`` is injectable so that tests can pin the draw; it is called exactly once, with
    ``(0.0, ceiling)``.
    """
    return uniform(0.0, backoff_ceiling(attempt, base, cap))
