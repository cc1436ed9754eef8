"""The delivery accounting: ledger records in, counter deltas out, with no I/O.

Nodes write ledger records (:data:`LedgerEvent`) in batches; the ledger keeps, per time bucket of
:data:`BUCKET_SECONDS` by publish time (:func:`bucket_of`) and per node, the counters of
:data:`COUNTERS` that the monitor reconciles (docs/monitoring.md). :class:`Tallies` is the one
statement of which record moves which counter; it is the memory ledger's accounting, and the
reference the Redis ledger script (``pushsvc.broker.redis.scripts.LEDGER``) is checked against,
row by row, in the contract suite.

The rules, per (message, device) pair, each decided by a first-wins marker so that retries,
reconnects, replays and records arriving in any order count once:

- ``Accepted``: ``published`` on its node, once per message id.
- ``Sent`` attempt 1: the pair's first Sent or Expected owns it; if it is this Sent, ``expected``
  and ``sent`` on its node; if an Expected owned it and no Sent came since, ``sent`` on the node
  of this Sent (it completes what was owed). ``Sent`` attempt > 1: ``redelivered`` on its node,
  every time.
- ``Expected``: if it owns the pair, ``expected`` on its node (and the pair is owed, unsent).
- ``Acked``: ``acked`` on its node for the device's first ack (from whichever session).
- ``Expired``: ``expired`` on its node, once per pair.
- ``Published`` and ``SentCount`` move no counter.

A message id without a publish time (:func:`bucket_of` is None) is not accounted; its acks are
still marked (:meth:`Tallies.acked`).

Calling contract: apply each record once, in the order received (the markers are first-wins);
call :meth:`Tallies.forget` when a message's trail is dropped and :meth:`Tallies.drop` when
a bucket is (after that, records of the message count as new).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import assert_never

import msgspec


# Ledger events: what nodes write, batched, and what trails are built from.
class Published(msgspec.Struct, tag="published", frozen=True):
    message_id: str
    event: str
    ts: float
    expires: float
    ack: bool
    streams: dict[str, str]


class Sent(msgspec.Struct, tag="sent", frozen=True):
    message_id: str
    device: str
    session: str
    node: str
    at: float
    attempt: int


class SentCount(msgspec.Struct, tag="sent_count", frozen=True):
    """Writes of an ``ack: false`` message on one node (no per-device detail)."""

    message_id: str
    node: str
    count: int


class Acked(msgspec.Struct, tag="acked", frozen=True):
    message_id: str
    device: str
    session: str
    node: str
    at: float


class Accepted(msgspec.Struct, tag="accepted", frozen=True):
    """A message accepted by the publish API of ``node`` (counted once per message)."""

    message_id: str
    node: str
    ack: bool


class Expected(msgspec.Struct, tag="expected", frozen=True):
    """A delivery ``node`` owes to ``device`` and has not written (yet): the first event of a
    (message, device) pair that is not a :class:`Sent`. A later Sent of the pair completes it."""

    message_id: str
    device: str
    session: str
    node: str
    at: float


class Expired(msgspec.Struct, tag="expired", frozen=True):
    """``device`` connected after the message's ttl: ``node`` did not deliver it."""

    message_id: str
    device: str
    node: str


LedgerEvent = Published | Sent | SentCount | Acked | Accepted | Expected | Expired


#: Width of an accounting bucket, seconds. Nodes and monitor must agree: a constant, not a setting.
BUCKET_SECONDS = 5

#: The counters of a bucket, per node (see docs/monitoring.md for their exact definitions).
COUNTERS = ("published", "expected", "sent", "acked", "redelivered", "expired")


def bucket_of(message_id: str) -> int | None:
    """The accounting bucket (its start, unix seconds) of a message, from the publish time its id
    starts with (12 hex digits of unix ms, see ``pushsvc.node.publish.new_id``); None for an id of
    another form (it is not accounted)."""
    head = message_id[:12]
    if len(head) != 12:
        return None
    try:
        ms = int(head, 16)
    except ValueError:
        return None
    return ms // 1000 // BUCKET_SECONDS * BUCKET_SECONDS


#: node id -> counter -> value, for one bucket.
Tally = dict[str, dict[str, int]]


@dataclass(frozen=True, slots=True)
class Delta:
    """``counter`` of ``node`` in ``bucket`` moves by ``n``."""

    bucket: int
    node: str
    counter: str
    n: int = 1


@dataclass(slots=True)
class Marks:
    """The first-wins markers of one message, by device."""

    owners: dict[str, str] = field(default_factory=dict)  # the node of the first Sent/Expected
    unsent: set[str] = field(default_factory=set)  # owned by an Expected, no Sent since
    acked: set[str] = field(default_factory=set)
    expired: set[str] = field(default_factory=set)


class Tallies:
    """The markers of every message and the tallies they add up to (see the module docstring)."""

    def __init__(self) -> None:
        self.marks: dict[str, Marks] = {}
        self.by_bucket: dict[int, Tally] = {}
        self.published: dict[int, set[str]] = {}  # bucket -> ids of its Accepted messages

    def apply(self, event: LedgerEvent) -> list[Delta]:
        """Mark ``event`` and return the counters it moves (already added to :attr:`by_bucket`)."""
        m = event.message_id
        bucket = bucket_of(m)
        if isinstance(event, Acked):  # marked whether accounted or not: acks are read back
            marks = self.marks.setdefault(m, Marks())
            if event.device in marks.acked:
                return []
            marks.acked.add(event.device)
            return self._add(bucket, event.node, "acked")
        if bucket is None:
            return []
        match event:
            case Accepted():
                ids = self.published.setdefault(bucket, set())
                if m in ids:
                    return []
                ids.add(m)
                return self._add(bucket, event.node, "published")
            case Sent():
                if event.attempt > 1:
                    return self._add(bucket, event.node, "redelivered")
                marks = self.marks.setdefault(m, Marks())
                if event.device not in marks.owners:
                    marks.owners[event.device] = event.node
                    return self._add(bucket, event.node, "expected", "sent")
                if event.device in marks.unsent:
                    marks.unsent.discard(event.device)
                    return self._add(bucket, event.node, "sent")
                return []
            case Expected():
                marks = self.marks.setdefault(m, Marks())
                if event.device in marks.owners:
                    return []
                marks.owners[event.device] = event.node
                marks.unsent.add(event.device)
                return self._add(bucket, event.node, "expected")
            case Expired():
                marks = self.marks.setdefault(m, Marks())
                if event.device in marks.expired:
                    return []
                marks.expired.add(event.device)
                return self._add(bucket, event.node, "expired")
            case Published() | SentCount():
                return []
            case _:
                assert_never(event)

    def _add(self, bucket: int | None, node: str, *counters: str) -> list[Delta]:
        if bucket is None:
            return []
        by_node = self.by_bucket.setdefault(bucket, {}).setdefault(node, {})
        for counter in counters:
            by_node[counter] = by_node.get(counter, 0) + 1
        return [Delta(bucket, node, counter) for counter in counters]

    def acked(self, device: str, message_id: str) -> bool:
        marks = self.marks.get(message_id)
        return marks is not None and device in marks.acked

    def owners(self, message_id: str) -> dict[str, str]:
        """device -> the node that owes it ``message_id`` (its first Sent or Expected)."""
        marks = self.marks.get(message_id)
        return dict(marks.owners) if marks is not None else {}

    def forget(self, message_id: str) -> None:
        """Drop the markers of ``message_id``."""
        self.marks.pop(message_id, None)

    def drop(self, bucket: int) -> None:
        """Drop the tallies of ``bucket`` and the ids of its published messages."""
        self.by_bucket.pop(bucket, None)
        self.published.pop(bucket, None)


def tally(events: list[LedgerEvent]) -> dict[int, Tally]:
    """The tallies ``events`` add up to, applied in order from nothing."""
    tallies = Tallies()
    for event in events:
        tallies.apply(event)
    return tallies.by_bucket
