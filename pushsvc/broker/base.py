"""The broker interfaces a node depends on, and the records they exchange.

A :class:`Broker` is one object with five parts, each a small interface:

- :class:`Broker.publish` appends a message to the history of each of its streams, puts its
  envelope on the bus and starts its delivery trail as one atomic step, so every node sees a
  stream's envelopes in offset order and an accepted message always has a trail.
- :class:`History` reads a stream's entries back (resume, offline inbox, catch-up).
- :class:`Bus` carries each envelope to the nodes that follow its stream, and operator
  commands to every node.
- :class:`Registry` knows the nodes and their sessions (heartbeats with TTLs).
- :class:`Ledger` keeps each message's delivery trail, written in batches off the hot path.
- :class:`Lease` lets one of several monitors be the active one.
- :class:`RateLimits` keeps the API keys' publish token buckets (cluster-wide on Redis).
- :class:`Escalations` keeps the patients' push subscriptions and the timers of messages
  that escalate when no device of their user acks them (each fired by one process only).
- :class:`WebhookQueue` holds the webhook deliveries still owed to the hospital's endpoints.

The ledger also keeps the **delivery accounting** the monitor reconciles (docs/monitoring.md):
per time bucket of :data:`BUCKET_SECONDS` by publish time (:func:`bucket_of`) and per node,
counters of published messages and of (message, device) pairs expected, sent, acked, redelivered
and expired, each pair counted once whatever the retries, reconnects and replays.

**Idempotency keys** are bound inside the same atomic step as the append: a keyed
:class:`Publication` whose key is already bound appends nothing and gets the first message's
:class:`Placed` back (``duplicate``). A key is bound exactly when its message was appended, so a
publish whose outcome is unknown (its reply lost) can be retried with the same key: whichever
attempt runs first appends, every later one gets its id. Keys live ``idempotency_ttl`` seconds.

Calling contract: ``await start()`` before anything else, ``await close()`` at the end (both
idempotent). ``up`` is False while the broker cannot be reached; publishing then raises
:class:`pushsvc.errors.BrokerUnavailable`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Sequence
from typing import Literal

import msgspec

from pushsvc.broker.reach import (
    NULL,
    Claimed,
    Escalation,
    Escalations,
    PushSpec,
    Subscription,
    WebhookDelivery,
    WebhookFailure,
    WebhookQueue,
)

# The ledger records and the accounting buckets are pure: defined in the core, named here too.
from pushsvc.core.accounting import BUCKET_SECONDS as BUCKET_SECONDS
from pushsvc.core.accounting import COUNTERS as COUNTERS
from pushsvc.core.accounting import Accepted as Accepted
from pushsvc.core.accounting import Acked as Acked
from pushsvc.core.accounting import Expected as Expected
from pushsvc.core.accounting import Expired as Expired
from pushsvc.core.accounting import LedgerEvent as LedgerEvent
from pushsvc.core.accounting import Published as Published
from pushsvc.core.accounting import Sent as Sent
from pushsvc.core.accounting import SentCount as SentCount
from pushsvc.core.accounting import Tally as Tally
from pushsvc.core.accounting import bucket_of as bucket_of
from pushsvc.core.trail import Trail
from pushsvc.errors import BrokerError
from pushsvc.types import Envelope, HistoryEntry, Message


class NodeInfo(msgspec.Struct, kw_only=True):
    id: str
    client_addr: str
    internal_addr: str
    pid: int
    version: str
    started: float
    heartbeat: float
    state: Literal["up", "draining"] = "up"
    connections: int = 0
    users: int = 0
    broker_lag: float = 0.0


class SessionInfo(msgspec.Struct, kw_only=True):
    id: str
    node: str
    user: str
    device: str
    remote: str
    connected_at: float
    topics: list[str] = []
    sent: int = 0
    acked: int = 0
    pending: int = 0
    outbox_bytes: int = 0
    last_ack: float | None = None
    rtt: float | None = None


class Command(msgspec.Struct, kw_only=True, frozen=True):
    """An operator command for one node: close a session, drain, or close the sessions of
    ``user`` whose token was issued before ``not_before`` (a revocation, sent to every node)."""

    kind: str  # "close_session" | "drain" | "revoke_user"
    node: str
    session: str = ""
    code: int = 4010
    reason: str = ""
    user: str = ""
    not_before: int = 0


def device_key(user: str, device: str) -> str:
    """The name of a patient's device in ledger records and trails: device ids are chosen by
    clients, so two patients may both have a ``phone``; they never share an ack. (User names
    have no ``/``: the first one separates.)"""
    return f"{user}/{device}"


def split_device_key(key: str) -> tuple[str, str]:
    """``(user, device)`` of a :func:`device_key`."""
    user, _, device = key.partition("/")
    return user, device


class Pair(msgspec.Struct, frozen=True, kw_only=True):
    """What the ledger knows of one expected (message, device) pair."""

    message_id: str
    device: str
    node: str  # the node that first expected or wrote it: the one that owes it
    sent: bool  # written to a session of the device at least once
    acked: bool  # acked by the device
    expires_at: float  # the message's expiry, unix seconds
    attempts: int = 0  # the most writes to one session
    nodes: tuple[str, ...] = ()  # every node that wrote it or expected it


class Publication(msgspec.Struct, frozen=True, gc=False):
    """A message to append to ``streams``. ``key``: its idempotency key, already scoped to its
    caller (:meth:`pushsvc.broker.keys.Keyspace.idempotency` takes it whole); ``fingerprint``:
    what the request said, compared when the key is found bound."""

    message: Message
    streams: list[str]
    key: str | None = None
    fingerprint: str = ""


class Placed(msgspec.Struct, kw_only=True):
    """Where a publication went: its message id and offsets by stream. ``duplicate``: its key
    was bound already, this is the first publication's placement and ``fingerprint`` the first
    request's."""

    id: str
    offsets: dict[str, str]
    fingerprint: str = ""
    duplicate: bool = False


#: What :meth:`Broker.publish` says of one publication: placed, or why not. A
#: :class:`pushsvc.errors.BrokerError` means it may or may not have been appended (its key, if
#: any, is bound exactly when it was).
Outcome = Placed | BrokerError


class History(abc.ABC):
    @abc.abstractmethod
    async def read(self, stream: str, after: str | None, limit: int) -> list[HistoryEntry]:
        """Entries of ``stream`` after offset ``after`` (from the oldest kept when None),
        oldest first, at most ``limit``."""

    async def read_many(
        self, reads: Sequence[tuple[str, str | None]], limit: int
    ) -> list[list[HistoryEntry]]:
        """:meth:`read` of each ``(stream, after)``, in order (a backend may do them in one
        round trip)."""
        return [await self.read(stream, after, limit) for stream, after in reads]

    @abc.abstractmethod
    async def last_offset(self, stream: str) -> str | None:
        """The newest offset of ``stream``, or None when it has no history."""


class Bus(abc.ABC):
    """Routed delivery: a node receives the envelopes of the streams it follows (those its
    sessions read), and every command."""

    @abc.abstractmethod
    def subscribe(
        self,
        on_envelope: Callable[[Envelope], None],
        on_command: Callable[[Command], None],
        on_resync: Callable[[], None] | None = None,
    ) -> None:
        """Deliver the envelopes of followed streams and every command to the callbacks: one
        envelope per (message, stream), each stream's in offset order.

        ``on_resync`` is called each time the subscription is re-established after it was lost,
        before any envelope that arrived after that: envelopes may have been missed meanwhile,
        and the node catches up from history. Call before ``start()``; one subscriber per
        broker."""

    @abc.abstractmethod
    async def follow(self, streams: Iterable[str]) -> None:
        """Receive the envelopes of ``streams`` from now on. Returns once the broker confirmed
        it, so a history read after it misses nothing between history and live; raises
        :class:`pushsvc.errors.BrokerUnavailable` when that cannot be confirmed in time (the
        streams stay wanted and are followed once the bus is back)."""

    @abc.abstractmethod
    def unfollow(self, streams: Iterable[str]) -> None:
        """Stop receiving the envelopes of ``streams`` (soon: some may still arrive)."""

    @abc.abstractmethod
    async def send_command(self, command: Command) -> None:
        """Deliver ``command`` to the node it names."""


class Registry(abc.ABC):
    @abc.abstractmethod
    async def register(self, node: NodeInfo, ttl: float) -> None:
        """Add or refresh ``node``; it disappears ``ttl`` seconds after its last refresh."""

    @abc.abstractmethod
    async def deregister(self, node_id: str) -> None: ...

    @abc.abstractmethod
    async def nodes(self) -> list[NodeInfo]: ...

    @abc.abstractmethod
    async def add_sessions(self, sessions: list[SessionInfo]) -> None:
        """Record sessions opened on their nodes; each lives as long as its node does."""

    @abc.abstractmethod
    async def remove_sessions(self, node_id: str, session_ids: list[str]) -> None: ...

    @abc.abstractmethod
    async def sessions(
        self, user: str | None = None, node: str | None = None, limit: int = 100
    ) -> list[SessionInfo]:
        """Sessions of live nodes, filtered by ``user`` and ``node``, at most ``limit``."""

    @abc.abstractmethod
    async def find_session(self, session_id: str) -> SessionInfo | None: ...

    @abc.abstractmethod
    async def revoke(self, user: str, not_before: int, ttl: float) -> None:
        """Refuse ``user``'s tokens issued (``iat``) before ``not_before`` (unix s) for ``ttl``
        seconds (the longest token lifetime: older tokens have expired by then). A later
        revocation of the same user replaces an earlier one."""

    @abc.abstractmethod
    async def revoked(self, user: str) -> int | None:
        """The ``not_before`` of ``user``'s revocation in force, or None."""

    @abc.abstractmethod
    async def heartbeats(self) -> dict[str, float]:
        """Heartbeat expiry (unix s) by node id, also of nodes whose heartbeat lapsed without a
        ``deregister`` (a crash or a hang), for a while after it did; a node that deregistered
        is not listed."""


class Ledger(abc.ABC):
    @abc.abstractmethod
    async def record(self, events: list[LedgerEvent]) -> None:
        """Apply a batch of events. Idempotent per (message, session) for sent/acked."""

    @abc.abstractmethod
    async def trail(self, message_id: str) -> Trail | None: ...

    @abc.abstractmethod
    async def acked_ids(self, device: str, message_ids: list[str]) -> set[str]:
        """Those of ``message_ids`` that ``device`` has acked."""

    @abc.abstractmethod
    async def tallies(self, buckets: list[int]) -> dict[int, Tally]:
        """The accounting counters of each of ``buckets`` (empty for a bucket with none)."""

    @abc.abstractmethod
    async def bucket_messages(self, bucket: int) -> list[str]:
        """The ids of the messages published in ``bucket`` (from :class:`Accepted` records)."""

    @abc.abstractmethod
    async def pairs(self, message_ids: list[str]) -> list[Pair]:
        """Every expected (message, device) pair of ``message_ids`` whose trail still exists."""


class Lease(abc.ABC):
    @abc.abstractmethod
    async def acquire(self, holder: str, ttl: float) -> bool:
        """Take the lease for ``ttl`` seconds, or extend it when ``holder`` has it already;
        False while someone else holds it."""

    @abc.abstractmethod
    async def release(self, holder: str) -> None:
        """Give the lease up if ``holder`` has it."""


class RateLimits(abc.ABC):
    @abc.abstractmethod
    async def take(self, name: str, rate: float, burst: float) -> float:
        """Take one token from bucket ``name``, which fills at ``rate`` per second up to
        ``burst`` (a new bucket is full). Returns 0.0 when taken, else the seconds until one
        will be there (nothing is taken then)."""


class Broker(abc.ABC):
    history: History
    bus: Bus
    registry: Registry
    ledger: Ledger
    lease: Lease
    limits: RateLimits
    escalations: Escalations
    webhooks: WebhookQueue

    @property
    @abc.abstractmethod
    def up(self) -> bool: ...

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def publish(self, items: list[Publication], origin: str) -> list[Outcome]:
        """Append each message to its streams, put its envelope on the bus, start its trail
        (the :class:`Published` record, as if recorded to the ledger) and bind its key,
        atomically per message and in order; a publication whose key is bound already does none
        of that. One outcome per item, in order (a :class:`Placed` with ``duplicate`` for a bound
        key, whatever its fingerprint: the caller compares). Raises
        :class:`pushsvc.errors.BrokerUnavailable` when no item's outcome is known."""


__all__ = [
    "BUCKET_SECONDS",
    "COUNTERS",
    "NULL",
    "Accepted",
    "Acked",
    "Broker",
    "Bus",
    "Claimed",
    "Command",
    "Escalation",
    "Escalations",
    "Expected",
    "Expired",
    "History",
    "Lease",
    "Ledger",
    "LedgerEvent",
    "NodeInfo",
    "Outcome",
    "Pair",
    "Placed",
    "Publication",
    "Published",
    "PushSpec",
    "RateLimits",
    "Registry",
    "Sent",
    "SentCount",
    "SessionInfo",
    "Subscription",
    "Tally",
    "Trail",
    "WebhookDelivery",
    "WebhookFailure",
    "WebhookQueue",
    "bucket_of",
    "device_key",
    "split_device_key",
]
