"""What the fan-out benchmark's parent and its load workers say to each other, and token minting.

The parent writes one JSON command per line to a worker's stdin; the worker answers each with one
JSON reply per line on its stdout. The first command is always :class:`Setup`, answered by
:class:`Ready`. A worker exits when its stdin closes (the parent went away), after :class:`Close`,
or when its deadline passes, whichever comes first.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, Final

import jwt
import msgspec
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

BROADCAST_EVENT: Final = "bench.broadcast"
USER_EVENT: Final = "bench.user"


PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def user_id(prefix: str, index: int) -> str:
    """The user id of connection ``index`` (one connection per user)."""
    return f"{prefix}{index}"


def mint_token(
    key: str | PrivateKey,
    user: str,
    ttl: int,
    topics: list[str],
    now: int,
    algorithm: str = "HS256",
) -> str:
    """A JWT for ``user``: claims ``sub``, ``iat``, ``exp`` and, if any, ``topics``.

    ``key`` is the HS256 secret, or for RS256 / ES256 the private key (load a PEM once with
    :func:`private_key`: PyJWT would parse the PEM again for every token).
    """
    claims: dict[str, object] = {"sub": user, "iat": now, "exp": now + ttl}
    if topics:
        claims["topics"] = topics
    return jwt.encode(claims, key, algorithm=algorithm)


def private_key(pem: str) -> PrivateKey:
    """The RSA or EC private key in ``pem`` (no password)."""
    key = load_pem_private_key(pem.encode(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise TypeError("an RSA or EC private key is needed")
    return key


# Parent -> worker


class Setup(msgspec.Struct, tag=True, frozen=True):
    """Who the worker is and what it connects. Answered by :class:`Ready`.

    ``run`` identifies this benchmark run: the benchmark's messages carry it in ``data.run``, and
    messages of other runs (replayed history of an earlier run on the same node) are not counted.
    ``protocol`` is ``"pushsvc"`` (tokens, ``hello`` / ``welcome``) or ``"socketio"`` (Socket.IO 4
    over a WebSocket, the user named in the namespace CONNECT; no tokens), see ``bench.sioconn``.
    """

    worker: int
    run: str
    url: str
    source_ip: str
    first: int
    count: int
    concurrency: int
    connect_timeout: float
    deadline: float
    cpus: list[int]
    user_prefix: str
    device_prefix: str
    token_ttl: int
    topics: list[str]
    token_secret: str | None = None
    token_private_key: str | None = None
    """PEM private key to mint RS256 / ES256 tokens with (``token_algorithm``), else HS256."""
    token_algorithm: str = "HS256"
    tokens: list[str] = []
    protocol: str = "pushsvc"


class Ramp(msgspec.Struct, tag=True, frozen=True):
    """Open every connection (bounded concurrency). Answered by :class:`Ramped`."""


class CollectBroadcast(msgspec.Struct, tag=True, frozen=True):
    """Wait until every open connection got broadcast ``seq`` or ``timeout`` passes.

    Answered by :class:`BroadcastArrivals`.
    """

    seq: int
    timeout: float


class CollectUser(msgspec.Struct, tag=True, frozen=True):
    """Hand over the user-targeted arrivals recorded so far. Answered by :class:`UserArrivals`."""


class GetStatus(msgspec.Struct, tag=True, frozen=True):
    """Answered by :class:`Status`."""


class Close(msgspec.Struct, tag=True, frozen=True):
    """Close every connection with 1000 and exit. Answered by :class:`Status`, then EOF."""

    timeout: float


Command = Setup | Ramp | CollectBroadcast | CollectUser | GetStatus | Close


# Worker -> parent


class Ready(msgspec.Struct, tag=True, frozen=True):
    worker: int
    pid: int


class Ramped(msgspec.Struct, tag=True, frozen=True):
    """Result of a ramp: ``handshake_ns`` holds connect-to-welcome times of the successes."""

    worker: int
    ok: int
    failed: int
    errors: dict[str, int]
    seconds: float
    handshake_ns: list[int]
    connected: list[int]


class BroadcastArrivals(msgspec.Struct, tag=True, frozen=True):
    """Arrival times (``time.time_ns()``) of broadcast ``seq``, one per connection that got it."""

    worker: int
    seq: int
    arrivals: list[int]
    missing: int
    duplicates: int


class UserArrivals(msgspec.Struct, tag=True, frozen=True):
    """``(seq, time.time_ns())`` of every user-targeted message received, in arrival order."""

    worker: int
    arrivals: list[tuple[int, int]]
    duplicates: int
    acks_sent: int


class Status(msgspec.Struct, tag=True, frozen=True):
    worker: int
    open: int
    closed: dict[str, int]
    protocol_errors: int
    pings_answered: int
    unexpected_frames: int
    foreign_messages: int


def clients_at_end(status: Sequence[Status]) -> dict[str, Any]:
    """The clients' figures of every worker's :class:`Status`, summed (``closed_during_run``:
    connections closed by the server or lost, by close code or ``lost``)."""
    closed: Counter[str] = Counter()
    for s in status:
        closed.update(s.closed)
    return {
        "open_at_end": sum(s.open for s in status),
        "closed_during_run": dict(closed),
        "protocol_errors": sum(s.protocol_errors for s in status),
        "pings_answered": sum(s.pings_answered for s in status),
        "unexpected_frames": sum(s.unexpected_frames for s in status),
        "foreign_messages": sum(s.foreign_messages for s in status),
    }


class WorkerFailed(msgspec.Struct, tag=True, frozen=True):
    """The worker hit an error it cannot recover from; it exits after sending this."""

    worker: int
    error: str


Reply = Ready | Ramped | BroadcastArrivals | UserArrivals | Status | WorkerFailed
