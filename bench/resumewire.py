"""What ``bench.nodeloss`` and its load processes (``bench.resumeload``) say to each other.

The parent writes one JSON command per line to a load process's stdin; the process answers each
with one JSON reply per line on its stdout. The first command is always :class:`Setup`, answered
by :class:`Ready`; :class:`Collect` is the last, answered by :class:`Report`.
"""

from __future__ import annotations

import msgspec

from bench.common import Ready  # the fan-out workers' own (worker, PID): import it from there


class Setup(msgspec.Struct, tag=True, frozen=True):
    """Clients ``first .. first + len(homes) - 1``; client ``first + i`` starts on
    ``urls[homes[i]]``. Answered by :class:`Ready` once every token is minted."""

    worker: int
    run: str
    urls: list[str]
    homes: list[int]
    first: int
    source_ip: str
    user_prefix: str
    token_secret: str
    token_ttl: int
    concurrency: int
    connect_timeout: float
    backoff_base: float
    backoff_cap: float
    deadline: float
    seed: int


class Ramp(msgspec.Struct, tag=True, frozen=True):
    """Connect every client (``concurrency`` at a time); answered by :class:`Ramped` when each
    has had its first ``welcome`` or ``limit`` seconds passed."""

    limit: float


class Count(msgspec.Struct, tag=True, frozen=True):
    """Answered by :class:`Counted`: distinct benchmark messages the app got so far."""


class Collect(msgspec.Struct, tag=True, frozen=True):
    """Close every connection, answer :class:`Report` and exit."""


Command = Setup | Ramp | Count | Collect


class Ramped(msgspec.Struct, tag=True, frozen=True):
    worker: int
    ok: int
    seconds: float


class Counted(msgspec.Struct, tag=True, frozen=True):
    worker: int
    received: int
    open: int


class DeviceReport(msgspec.Struct, frozen=True, array_like=True):
    """What one client saw. Times are ``time.time_ns()``."""

    index: int
    arrivals: list[tuple[str, int]]  # (message id, arrival) as handed to the app
    welcomes: list[tuple[int, str]]  # (when, node id) of every welcome
    dials: list[int]  # when each connection attempt began
    losses: list[int]  # when an open session's connection ended
    failed_attempts: int
    duplicates: int  # past the offset check, with an id the app already had
    offset_dropped: int  # acked and dropped: offset not past the stream's last
    dropped_unseen: int  # of those, ids the app never had (the offset check would lose them)
    stopped: str  # why the client gave up ("" if it did not)


class Report(msgspec.Struct, tag=True, frozen=True):
    worker: int
    devices: list[DeviceReport]
    errors: dict[str, int]


class Failed(msgspec.Struct, tag=True, frozen=True):
    worker: int
    error: str


Reply = Ready | Ramped | Counted | Report | Failed
