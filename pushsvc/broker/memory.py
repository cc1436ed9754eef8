"""The embedded broker: every part of :mod:`pushsvc.broker.base` kept in this process.

It is a real implementation, not a stand-in: one node with no Redis runs on it, and it passes the
same contract suite as the Redis broker. Expiry is checked against ``clock()`` when data is read and
swept as it is written, so nothing grows without bound: a stream whose newest entry is older than
the history TTL is dropped whole, idempotency keys leave an expiry heap in order (a claim costs
O(log n) however many keys are live).
"""

from __future__ import annotations

import heapq
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable

from pushsvc.broker.base import (
    Accepted,
    Acked,
    Broker,
    Bus,
    Command,
    Expected,
    Expired,
    History,
    Lease,
    Ledger,
    LedgerEvent,
    NodeInfo,
    Outcome,
    Pair,
    Placed,
    Publication,
    Published,
    RateLimits,
    Registry,
    Sent,
    SentCount,
    SessionInfo,
    Tally,
)
from pushsvc.broker.keys import NODE_PRUNE_AFTER
from pushsvc.broker.memory_push import MemoryEscalations, MemoryWebhookQueue
from pushsvc.core import offsets
from pushsvc.core.accounting import Tallies
from pushsvc.core.flow import TokenBucket
from pushsvc.core.trail import Delivery, Trail
from pushsvc.types import Envelope, HistoryEntry, Message

Clock = Callable[[], float]
Early = Sent | SentCount | Acked | Expected | Expired  # records applied to a started trail


class MemoryHistory(History):
    def __init__(self, size: int, ttl: float, clock: Clock) -> None:
        self._size = size
        self._ttl = ttl
        self._clock = clock
        self._streams: dict[str, deque[HistoryEntry]] = {}
        # stream -> its newest position, least recently appended to first: a stream whose
        # newest entry is past the TTL has no entry left to read and is dropped (as Redis
        # expires the key ``ttl`` after its last append)
        self._last: OrderedDict[str, offsets.Position] = OrderedDict()

    def __len__(self) -> int:
        """Streams held."""
        return len(self._streams)

    def append(self, stream: str, message: Message) -> tuple[str, str]:
        """Append ``message`` to ``stream``: its offset, and the offset of the entry before it
        ("0-0" when the stream had none)."""
        now_ms = int(self._clock() * 1000)
        self.sweep(now_ms)
        before = self._last.pop(stream, offsets.ZERO)
        position = offsets.next_position(before, now_ms)
        self._last[stream] = position
        offset = offsets.format_position(position)
        entries = self._streams.get(stream)
        if entries is None:
            entries = self._streams[stream] = deque(maxlen=self._size)
        entries.append(HistoryEntry(offset, message))
        self._trim(entries, now_ms)
        return offset, offsets.format_position(before)

    def sweep(self, now_ms: int) -> None:
        """Drop the streams last appended to more than the TTL ago (oldest first, O(1) each)."""
        horizon = now_ms - int(self._ttl * 1000)
        last = self._last
        while last:
            stream, (ms, _) = next(iter(last.items()))
            if ms >= horizon:
                return
            del last[stream]
            self._streams.pop(stream, None)

    def _trim(self, entries: deque[HistoryEntry], now_ms: int) -> None:
        horizon = now_ms - int(self._ttl * 1000)
        while entries and entries[0].message.ts < horizon:
            entries.popleft()

    async def read(self, stream: str, after: str | None, limit: int) -> list[HistoryEntry]:
        entries = self._streams.get(stream)
        if not entries:
            return []
        self._trim(entries, int(self._clock() * 1000))
        start = offsets.parse(after) if after is not None else None
        out = []
        for entry in entries:
            if start is None or offsets.parse(entry.offset) > start:
                out.append(entry)
                if len(out) >= limit:
                    break
        return out

    async def last_offset(self, stream: str) -> str | None:
        entries = self._streams.get(stream)
        return entries[-1].offset if entries else None


class MemoryBus(Bus):
    """The bus within one process: an envelope reaches the subscriber when its stream is
    followed, as on Redis."""

    def __init__(self) -> None:
        self._on_envelope: Callable[[Envelope], None] | None = None
        self._on_command: Callable[[Command], None] | None = None
        self.followed: set[str] = set()

    def subscribe(
        self,
        on_envelope: Callable[[Envelope], None],
        on_command: Callable[[Command], None],
        on_resync: Callable[[], None] | None = None,
    ) -> None:
        self._on_envelope = on_envelope
        self._on_command = on_command

    async def follow(self, streams: Iterable[str]) -> None:
        self.followed.update(streams)

    def unfollow(self, streams: Iterable[str]) -> None:
        self.followed.difference_update(streams)

    def deliver(self, stream: str, envelope: Envelope) -> None:
        if self._on_envelope is not None and stream in self.followed:
            self._on_envelope(envelope)

    async def send_command(self, command: Command) -> None:
        if self._on_command is not None:
            self._on_command(command)


class MemoryRegistry(Registry):
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._nodes: dict[str, tuple[NodeInfo, float]] = {}
        self._sessions: dict[str, dict[str, SessionInfo]] = {}  # node -> session id -> info
        self._revoked: dict[str, tuple[int, float]] = {}  # user -> (not_before, until)

    def _alive(self, node_id: str, now: float) -> bool:
        held = self._nodes.get(node_id)
        return held is not None and held[1] > now

    async def register(self, node: NodeInfo, ttl: float) -> None:
        self._nodes[node.id] = (node, self._clock() + ttl)

    async def deregister(self, node_id: str) -> None:
        self._nodes.pop(node_id, None)
        self._sessions.pop(node_id, None)

    async def nodes(self) -> list[NodeInfo]:
        now = self._clock()
        return [info for info, until in self._nodes.values() if until > now]

    async def add_sessions(self, sessions: list[SessionInfo]) -> None:
        for info in sessions:
            self._sessions.setdefault(info.node, {})[info.id] = info

    async def remove_sessions(self, node_id: str, session_ids: list[str]) -> None:
        held = self._sessions.get(node_id, {})
        for session_id in session_ids:
            held.pop(session_id, None)

    async def sessions(
        self, user: str | None = None, node: str | None = None, limit: int = 100
    ) -> list[SessionInfo]:
        now = self._clock()
        out: list[SessionInfo] = []
        for node_id in sorted(self._sessions):
            if (node is not None and node_id != node) or not self._alive(node_id, now):
                continue
            for info in self._sessions[node_id].values():
                if user is None or info.user == user:
                    out.append(info)
                    if len(out) >= limit:
                        return out
        return out

    async def find_session(self, session_id: str) -> SessionInfo | None:
        now = self._clock()
        for node_id, infos in self._sessions.items():
            info = infos.get(session_id)
            if info is not None and self._alive(node_id, now):
                return info
        return None

    async def revoke(self, user: str, not_before: int, ttl: float) -> None:
        self._revoked[user] = (not_before, self._clock() + ttl)

    async def revoked(self, user: str) -> int | None:
        held = self._revoked.get(user)
        if held is None or held[1] <= self._clock():
            self._revoked.pop(user, None)
            return None
        return held[0]

    async def heartbeats(self) -> dict[str, float]:
        horizon = self._clock() - NODE_PRUNE_AFTER
        return {n: until for n, (_, until) in self._nodes.items() if until > horizon}


class MemoryLedger(Ledger):
    """Trails by message id; each kept until its message expires plus ``retention`` seconds.

    Records may arrive in any order: a Sent, SentCount or Acked whose Published has not arrived
    yet is held (up to ``retention`` seconds) and applied when it does. The delivery accounting is
    :class:`pushsvc.core.accounting.Tallies`, fed each record as it is applied; a message's
    markers are kept with its trail, a bucket's tallies ``retention`` seconds after its last count.
    """

    def __init__(self, retention: float, clock: Clock) -> None:
        self._retention = retention
        self._clock = clock
        self._trails: dict[str, Trail] = {}
        self._expiry: deque[tuple[float, str]] = deque()
        self._early: dict[str, list[Early]] = {}  # before their Published
        self._early_expiry: deque[tuple[float, str]] = deque()
        self._tallies = Tallies()
        self._bucket_expiry: dict[int, float] = {}

    def _count(self, event: LedgerEvent) -> None:
        for delta in self._tallies.apply(event):
            self._bucket_expiry[delta.bucket] = self._clock() + self._retention

    async def record(self, events: list[LedgerEvent]) -> None:
        for event in events:
            if isinstance(event, Published):
                self.start(event)
                continue
            if isinstance(event, Accepted):
                self._count(event)
                continue
            trail = self._trails.get(event.message_id)
            if trail is not None:
                self._apply(trail, event)
                continue
            held = self._early.setdefault(event.message_id, [])
            if not held:
                self._early_expiry.append((self._clock() + self._retention, event.message_id))
            held.append(event)
        self._sweep()

    def start(self, event: Published) -> None:
        """Start a trail (the first Published record of a message wins)."""
        if event.message_id in self._trails:
            return
        trail = self._trails[event.message_id] = Trail(
            event.message_id, event.event, event.ts, event.expires, event.ack, dict(event.streams)
        )
        self._expiry.append((event.expires + self._retention, event.message_id))
        for early in self._early.pop(event.message_id, ()):
            self._apply(trail, early)

    def _apply(self, trail: Trail, event: Early) -> None:
        match event:
            case Sent():
                trail.record_sent(event.device, event.session, event.node, event.at, event.attempt)
            case SentCount():
                by_node = trail.sent_by_node
                by_node[event.node] = by_node.get(event.node, 0) + event.count
            case Acked():
                trail.record_acked(event.device, event.session, event.node, event.at)
            case Expected():
                if event.session not in trail.deliveries:
                    trail.deliveries[event.session] = Delivery(
                        event.device, event.session, event.node
                    )
            case Expired():
                pass  # accounted only
        self._count(event)

    def _sweep(self) -> None:
        now = self._clock()
        while self._expiry and self._expiry[0][0] <= now:
            _, message_id = self._expiry.popleft()
            self._trails.pop(message_id, None)
            self._tallies.forget(message_id)
        while self._early_expiry and self._early_expiry[0][0] <= now:
            self._early.pop(self._early_expiry.popleft()[1], None)
        for bucket in [b for b, until in self._bucket_expiry.items() if until <= now]:
            del self._bucket_expiry[bucket]
            self._tallies.drop(bucket)

    async def trail(self, message_id: str) -> Trail | None:
        return self._trails.get(message_id)

    def held(self, message_id: str) -> Trail | None:
        """The trail of ``message_id`` itself, to add to (the push path)."""
        return self._trails.get(message_id)

    async def acked_ids(self, device: str, message_ids: list[str]) -> set[str]:
        return {m for m in message_ids if self._tallies.acked(device, m)}

    async def tallies(self, buckets: list[int]) -> dict[int, Tally]:
        self._sweep()
        held = self._tallies.by_bucket
        return {b: {n: dict(c) for n, c in held.get(b, {}).items()} for b in buckets}

    async def bucket_messages(self, bucket: int) -> list[str]:
        self._sweep()
        return sorted(self._tallies.published.get(bucket, ()))

    async def pairs(self, message_ids: list[str]) -> list[Pair]:
        out = []
        for m in message_ids:
            trail = self._trails.get(m)
            if trail is None:
                continue
            for device, owner in sorted(self._tallies.owners(m).items()):
                mine = [d for d in trail.deliveries.values() if d.device == device]
                out.append(Pair(
                    message_id=m, device=device, node=owner,
                    sent=any(d.sent_at is not None for d in mine),
                    acked=self._tallies.acked(device, m), expires_at=trail.expires_at,
                    attempts=max((d.attempts for d in mine), default=0),
                    nodes=tuple(sorted({owner, *(d.node for d in mine)})),
                ))  # fmt: skip
        return out


class MemoryKeys:
    """Bound idempotency keys: key -> the placement of its first publication, each kept ``ttl``
    seconds. Expired keys leave a heap in expiry order as time passes: O(log n) per bind."""

    def __init__(self, ttl: float, clock: Clock) -> None:
        self._ttl = ttl
        self._clock = clock
        self._placed: dict[str, tuple[Placed, float]] = {}
        self._expiry: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._placed)

    def get(self, key: str) -> Placed | None:
        now = self._clock()
        self._sweep(now)
        held = self._placed.get(key)
        return held[0] if held is not None and held[1] > now else None

    def bind(self, key: str, placed: Placed) -> None:
        until = self._clock() + self._ttl
        self._placed[key] = (placed, until)
        heapq.heappush(self._expiry, (until, key))

    def _sweep(self, now: float) -> None:
        expiry = self._expiry
        while expiry and expiry[0][0] <= now:
            _, key = heapq.heappop(expiry)
            held = self._placed.get(key)
            if held is not None and held[1] <= now:
                del self._placed[key]


class MemoryLease(Lease):
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._holder = ""
        self._until = 0.0

    async def acquire(self, holder: str, ttl: float) -> bool:
        now = self._clock()
        if self._holder not in ("", holder) and self._until > now:
            return False
        self._holder, self._until = holder, now + ttl
        return True

    async def release(self, holder: str) -> None:
        if self._holder == holder:
            self._holder, self._until = "", 0.0


class MemoryRateLimits(RateLimits):
    """Buckets of this process (one node: the memory broker has no cluster)."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    async def take(self, name: str, rate: float, burst: float) -> float:
        now = self._clock()
        bucket = self._buckets.get(name)
        if bucket is None or (bucket.rate, bucket.burst) != (rate, burst):
            bucket = self._buckets[name] = TokenBucket.full(rate, burst, now)
        wait = bucket.take(now)
        if wait > 0:
            bucket.tokens += 1.0  # refused: nothing taken
        return wait


class MemoryBroker(Broker):
    """The whole broker in this process. ``clock`` returns unix seconds."""

    def __init__(
        self,
        *,
        history_size: int = 1000,
        history_ttl: float = 86_400,
        ledger_retention: float = 3600,
        idempotency_ttl: float = 86_400,
        push_retention: float = 30 * 86_400,
        clock: Clock = time.time,
    ) -> None:
        self.history = self._history = MemoryHistory(history_size, history_ttl, clock)
        self.bus = self._bus = MemoryBus()
        self.registry = MemoryRegistry(clock)
        self.ledger = self._ledger = MemoryLedger(ledger_retention, clock)
        self.keys = MemoryKeys(idempotency_ttl, clock)
        self.lease = MemoryLease(clock)
        self.limits = MemoryRateLimits(clock)
        self.escalations = MemoryEscalations(push_retention, self._ledger.held, clock)
        self.webhooks = MemoryWebhookQueue(clock)

    @property
    def up(self) -> bool:
        return True

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def publish(self, items: list[Publication], origin: str) -> list[Outcome]:
        results: list[Outcome] = []
        for item in items:
            held = self.keys.get(item.key) if item.key is not None else None
            if held is not None:
                again = Placed(
                    id=held.id, offsets=held.offsets, fingerprint=held.fingerprint, duplicate=True
                )
                results.append(again)
                continue
            m = item.message
            appended = {stream: self._history.append(stream, m) for stream in item.streams}
            placed = {stream: offset for stream, (offset, _) in appended.items()}
            self._ledger.start(
                Published(m.id, m.event, m.ts / 1000, m.expires / 1000, m.ack, placed)
            )
            for stream, (offset, after) in appended.items():
                self._bus.deliver(stream, Envelope(m, {stream: offset}, origin, after))
            result = Placed(id=m.id, offsets=placed, fingerprint=item.fingerprint)
            if item.key is not None:
                self.keys.bind(item.key, result)
            results.append(result)
        return results
