"""The rules of one session's life, without I/O: phases, which frame is allowed when, the live
buffer during replay, replay/live dedupe by offset, heartbeats, admission.

    HTTP ──upgraded──▶ HELLO ──accept──▶ REPLAY ──replayed──▶ LIVE ──closing──▶ CLOSING ──▶ CLOSED
                         │ hello_timeout: 4002                 heartbeat: ping, or 4009
                         └ a bad frame in any phase: 4003 (:class:`Close`)

The pump (``node/session.py``) feeds events in and applies what comes out:

- :meth:`SessionCore.receive` takes a decoded client frame and returns one effect or None:
  :class:`Write` (write these pre-framed bytes), :class:`Close` (send an error frame with ``slug``,
  then close with ``code``; a refused frame's close carries its ``frames_rejected``
  :class:`Count`), :class:`Admit` (a hello in its phase: verify its token, then call
  :meth:`accept` or close), :class:`Settle` (settle these acks in the node's ack ledger, then call
  :meth:`settled` with how many were first acks).
- :meth:`offer` is the fan-out's hot path: True means "write the frame now" (the session is live
  and the offset is new on that stream); during replay the item is buffered and False returned.
  It allocates nothing but the buffer entry.
- After :meth:`accept` you must eventually call :meth:`replayed` (or close): it switches to live
  and returns the buffered items, which you must :meth:`offer` again, in order.
- :meth:`heartbeat` is called when a ping is due; write what it returns, or close.
- Timers: the node's :class:`~pushsvc.core.timers.Timers` (one for all its sessions) holds
  what is due when (pings, token expiries, and acks through ``Deliveries``); its ``tick(now,
  mono)`` calls :meth:`heartbeat` and :meth:`expiry` and returns every effect due.
- Acks: the node's :class:`~pushsvc.core.acks.Deliveries` (one for all its sessions) takes the
  events ``sent`` (a message asking for an ack was written), ``acked`` (a :class:`Settle`),
  ``tick(now)`` and ``closed``, and returns effects: :class:`Write` (a redelivery),
  :class:`Close` (4011 :data:`NOT_ACKNOWLEDGED`), :class:`TrailEvent` (for the delivery trail)
  and :class:`Count` (a counter delta).
- Token lifetime: :meth:`accept` takes the token's ``exp``; :meth:`expiry` (called by
  ``Timers.tick`` once ``now`` reaches :attr:`expires`) closes with 4001 ``token_expired``. A
  ``refresh`` frame becomes :class:`Renew`: verify its token, check it is not revoked, then call
  :meth:`renew` (through ``Timers.renew``, which notes the new expiry) and apply what it returns
  (``refreshed``, or 4001 when the token names another user or does not live longer).
  :func:`revoked` is the revocation rule.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar, assert_never

from pushsvc.core import frames, offsets
from pushsvc.core.frames import ClientFrame
from pushsvc.core.offsets import Position
from pushsvc.core.streams import valid_name
from pushsvc.errors import FrameError

M = TypeVar("M")

PING_FRAME = frames.ws_text_frame(frames.PING)
PONG_FRAME = frames.ws_text_frame(frames.PONG)


class Phase(enum.IntEnum):
    HTTP = 0
    HELLO = 1
    REPLAY = 2
    LIVE = 3
    CLOSING = 4
    CLOSED = 5


@dataclass(frozen=True, slots=True)
class Write:
    payload: bytes


CounterName = Literal["acked", "redeliveries", "frames_rejected"]


@dataclass(frozen=True, slots=True)
class Count:
    """Add ``n`` to the counter ``name`` (with ``labels``, when it has some)."""

    name: CounterName
    n: int = 1
    labels: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Close:
    """Send an error frame with ``slug`` (and ``message``), then close with ``code``; apply
    ``counts`` with it (a refused client frame counts as ``frames_rejected``)."""

    code: int
    slug: str
    message: str
    counts: tuple[Count, ...] = ()


@dataclass(frozen=True, slots=True)
class Admit:
    hello: frames.Hello


@dataclass(frozen=True, slots=True)
class Settle:
    ids: list[str]


@dataclass(frozen=True, slots=True)
class Forward:
    """A frame for another part of the node (Web Push subscriptions), past hello."""

    frame: frames.PushSubscribe | frames.PushUnsubscribe


@dataclass(frozen=True, slots=True)
class Renew:
    token: str


@dataclass(frozen=True, slots=True)
class TrailEvent:
    """An event of the delivery trail (the broker's ledger): ``message_id`` was ``sent`` (written,
    the ``attempt``-th time) or ``acked`` (first ack) at ``at`` (unix s). The pump adds who:
    session, device, node."""

    event: Literal["sent", "acked"]
    message_id: str
    at: float
    attempt: int = 0


FrameEffect = Write | Close | Admit | Settle | Forward | Renew  # what a client frame makes
AckEffect = Write | Close | TrailEvent | Count  # what acks and the node's timers make
Effect = FrameEffect | AckEffect

PONG = Write(PONG_FRAME)
PING = Write(PING_FRAME)


def rejected(code: int, slug: str, message: str) -> Close:
    """The close for a client frame refused with ``slug``: it counts as ``frames_rejected``
    with ``slug`` as the reason (one of the node's known reasons)."""
    return Close(code, slug, message, (Count("frames_rejected", 1, (slug,)),))


DUPLICATE_HELLO = rejected(4003, "duplicate_hello", "hello was already received")
HELLO_EXPECTED = rejected(4003, "hello_expected", "ack before hello")
HELLO_TIMEOUT = Close(4002, "hello_timeout", "no hello frame in time")
HEARTBEAT_TIMEOUT = Close(4009, "heartbeat_timeout", "no pong in time")
NOT_ACKNOWLEDGED = Close(4011, "not_acknowledged", "deliveries were not acknowledged")
SLOW_CONSUMER = Close(4008, "slow_consumer", "the client does not read fast enough")
DRAINING = Close(1001, "node_draining", "node is shutting down, reconnect elsewhere")
REFUSED = "node is not accepting connections"
TOKEN_EXPIRED = Close(4001, "token_expired", "token expired: refresh it before exp, or reconnect")
TOKEN_REVOKED = Close(4001, "token_revoked", "token revoked: get a new token")
REFRESH_USER = Close(4001, "invalid_refresh", "the refresh token names another user")
REFRESH_EARLIER = Close(4001, "invalid_refresh", "the refresh token does not expire later")


def revoked(issued: int | None, not_before: int | None) -> bool:
    """Whether a token issued at ``issued`` (its ``iat``, whole seconds; None when it has none)
    is refused by a revocation of its user with ``not_before`` (None: no revocation). A
    revocation at unix time T stores ``not_before = floor(T) + 1``: every token whose ``iat``
    falls in T's second or earlier is refused, also one minted a moment after T in that second
    (``iat`` has no finer resolution); tokens without ``iat`` are refused too."""
    if not_before is None:
        return False
    return issued is None or issued < not_before


def not_before(revoked_at: float) -> int:
    """The ``not_before`` of a revocation made at unix time ``revoked_at`` (see :func:`revoked`)."""
    return int(revoked_at) + 1


@dataclass(frozen=True, slots=True)
class Resume:
    """What a hello asks to resume, checked: ``offsets`` of the streams the session reads (as
    sent, for the history reads) and their ``positions``."""

    offsets: dict[str, str]
    positions: dict[str, Position]


def check_hello(hello: frames.Hello, streams: tuple[str, ...]) -> Resume:
    """Check a hello's ``device`` and ``resume`` for a session reading ``streams``.

    Raises :class:`FrameError` (4003): ``bad_resume`` when an offset is not ASCII
    ``<digits>-<digits>``, ``invalid_device`` when the device id is not a name
    (:func:`streams.valid_name`). Entries for streams the session does not read are ignored.
    """
    if hello.device is not None and not valid_name(hello.device):
        raise FrameError(f"invalid device id {hello.device[:48]!r}", slug="invalid_device")
    try:
        positions = {stream: offsets.parse(offset) for stream, offset in hello.resume.items()}
    except FrameError as exc:
        raise FrameError(f"bad resume: {exc.message}", slug="bad_resume") from None
    wanted = {s: o for s, o in hello.resume.items() if s in streams}
    return Resume(wanted, {s: positions[s] for s in wanted})


def admits(upgraded: int, max_connections: int, draining: bool) -> bool:
    """Whether one more upgrade is accepted: every upgraded connection counts, hello or not (an
    upgrade that is not accepted gets HTTP 503 :data:`REFUSED`)."""
    return not draining and upgraded < max_connections


class SessionCore(Generic[M]):
    """One session's state; ``M`` is what the fan-out offers with a frame (the message)."""

    __slots__ = (
        "acked", "buffer", "expires", "last", "last_ack", "phase", "ping_sent", "rtt", "sent",
    )  # fmt: skip

    def __init__(self) -> None:
        self.phase = Phase.HTTP
        self.last: dict[str, Position] = {}  # per stream, the newest offset written
        self.buffer: list[tuple[str, Position, M, bytes]] | None = None  # live during replay
        self.ping_sent: float | None = None
        self.rtt: float | None = None
        self.sent = 0
        self.acked = 0
        self.last_ack: float | None = None
        self.expires = 0.0  # the token's exp (unix s), once accepted

    # -- phases ---------------------------------------------------------------------------------

    def upgraded(self) -> None:
        if self.phase == Phase.HTTP:
            self.phase = Phase.HELLO

    def hello_timeout(self) -> Close | None:
        """``hello_timeout`` ran out: 4002 when upgraded and still waiting for a hello."""
        return HELLO_TIMEOUT if self.phase == Phase.HELLO else None

    def accept(self, expires: float) -> None:
        """The hello was verified (its token expires at ``expires``, unix s): buffer live
        messages until :meth:`replayed`."""
        self.expires = expires
        if self.phase == Phase.HELLO:
            self.phase = Phase.REPLAY
            self.buffer = []

    def replayed(
        self, positions: dict[str, Position], written: list[tuple[str, Position]]
    ) -> list[tuple[str, Position, M, bytes]]:
        """The welcome and the replay were written: the session is live from ``positions`` (the
        clamped resume) and the ``written`` replayed offsets. Returns the buffered live items to
        :meth:`offer` again (duplicates of the replay are dropped there)."""
        if self.phase != Phase.REPLAY:
            return []
        last = self.last
        last.update(positions)
        for stream, position in written:
            known = last.get(stream)
            if known is None or position > known:
                last[stream] = position
        self.sent += len(written)
        buffered, self.buffer = self.buffer or [], None
        self.phase = Phase.LIVE
        return buffered

    def closing(self) -> bool:
        """Start closing; False when already closing or closed (nothing more to do)."""
        if self.phase >= Phase.CLOSING:
            return False
        self.phase = Phase.CLOSING
        self.buffer = None
        return True

    def closed(self) -> Phase:
        """The connection is gone; returns the phase it was in."""
        was = self.phase
        self.phase = Phase.CLOSED
        self.buffer = None
        return was

    # -- frames -----------------------------------------------------------------------------

    def receive(self, frame: ClientFrame, now: float) -> FrameEffect | None:
        """A decoded client frame; ``now`` is a monotonic clock (for the round trip time)."""
        match frame:
            case frames.Pong():
                if self.ping_sent is not None:
                    self.rtt = now - self.ping_sent
                    self.ping_sent = None
                return None
            case frames.Hello():
                self.ping_sent = None
                return Admit(frame) if self.phase == Phase.HELLO else DUPLICATE_HELLO
            case frames.Ack():
                self.ping_sent = None
                return Settle(frame.ids) if self.phase >= Phase.REPLAY else HELLO_EXPECTED
            case frames.Ping():
                self.ping_sent = None
                return PONG
            case frames.PushSubscribe() | frames.PushUnsubscribe():
                self.ping_sent = None
                return Forward(frame) if self.phase >= Phase.REPLAY else HELLO_EXPECTED
            case frames.Refresh():
                self.ping_sent = None
                return Renew(frame.token) if self.phase >= Phase.REPLAY else HELLO_EXPECTED
            case _:
                assert_never(frame)

    def settled(self, first_acks: int, now: float) -> None:
        """``first_acks`` acks were settled (see :class:`Settle`; ``Deliveries.acked`` calls
        this)."""
        if first_acks:
            self.acked += first_acks
            self.last_ack = now

    # -- token lifetime -------------------------------------------------------------------

    def renew(self, user: str, claimed: str, expires: int) -> Write | Close | None:
        """A refresh token of ``claimed`` (its ``sub``) expiring at ``expires`` was verified and is
        not revoked, for a session of ``user``: ``refreshed``, or 4001. None when closing."""
        if self.phase >= Phase.CLOSING:
            return None
        if claimed != user:
            return REFRESH_USER
        if expires <= self.expires:
            return REFRESH_EARLIER
        self.expires = expires
        return Write(frames.ws_text_frame(frames.encode_refreshed(expires)))

    def expiry(self, now: float) -> Close | None:
        """``now`` (unix s) reached an expiry noted for this session: 4001 ``token_expired``
        when its token has not been refreshed past it, else None (nor once closing)."""
        if Phase.REPLAY <= self.phase <= Phase.LIVE and now >= self.expires:
            return TOKEN_EXPIRED
        return None

    # -- delivery ---------------------------------------------------------------------------

    def offer(self, stream: str, position: Position, item: M, frame: bytes) -> bool:
        """A live message at ``position`` of ``stream``: True when it must be written now."""
        if self.phase == Phase.LIVE:
            last = self.last.get(stream)
            if last is not None and position <= last:
                return False  # already replayed, or a duplicate
            self.last[stream] = position
            self.sent += 1
            return True
        if self.phase == Phase.REPLAY and self.buffer is not None:
            self.buffer.append((stream, position, item, frame))
        return False

    def heartbeat(self, now: float) -> Write | Close | None:
        """A ping is due (``now`` monotonic): write a ping, or close with 4009 when the last one
        was not answered. None when the session is not live (no more pings)."""
        if self.phase != Phase.LIVE:
            return None
        if self.ping_sent is not None:
            return HEARTBEAT_TIMEOUT
        self.ping_sent = now
        return PING
