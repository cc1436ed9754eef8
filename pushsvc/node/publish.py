"""The publish path: from an accepted request to an appended, announced message.

:meth:`Publisher.attempt` gives each message its id and times, scopes its idempotency key to the
caller, hands the batch to :meth:`Broker.publish` (history, bus, trail and key, atomically per
message), writes the trail's first record, and says for each item, in order, what became of it:
a :class:`Result`, an :class:`IdempotencyConflict` (its key was used by this caller for another
request: nothing published), or a :class:`BrokerError` (it may have been published; its key,
if any, is bound exactly when it was, so a retry with the same key returns its first id).
"""

from __future__ import annotations

import hashlib
import random
import time
from typing import TYPE_CHECKING

import msgspec

from pushsvc.broker.base import Escalation, Placed, Publication, Published, PushSpec
from pushsvc.broker.keys import home
from pushsvc.errors import BrokerError, IdempotencyConflict, PushError
from pushsvc.telemetry import metrics, tracing
from pushsvc.types import Message

if TYPE_CHECKING:
    from pushsvc.node.gateway import Node


def new_id(now_ms: int, partition: int = 0) -> str:
    """A message id: 12 hex digits of publish time in ms, one for its home ``partition`` (see
    :func:`pushsvc.broker.keys.id_partition`), then 19 random hex digits.

    Unique, not secret (reading a message's trail needs the API key; a client can only ack what
    it was sent): Python's generator, seeded from the OS and re-seeded in a forked child, needs no
    system call per id."""
    return f"{now_ms:012x}{partition:x}{random.getrandbits(76):019x}"


class Outgoing(msgspec.Struct, frozen=True, gc=False):
    """One message to publish, already validated: its streams and its encoded ``data``."""

    streams: list[str]
    event: str
    data: bytes
    ttl: int
    ack: bool
    idempotency_key: str | None = None
    push: PushSpec | None = None

    def fingerprint(self) -> str:
        """A digest of everything the request asks for but its idempotency key: two requests
        with one key and different fingerprints are two different requests. ``data`` counts
        by its value (spacing and the order of object keys do not: the lane keeps the caller's
        bytes, the routes encode compactly), the recipients as a set."""
        data = msgspec.json.encode(msgspec.json.decode(self.data), order="sorted")
        asked = msgspec.structs.replace(
            self, streams=sorted(self.streams), data=data, idempotency_key=None
        )
        return hashlib.sha256(msgspec.json.encode(asked)).hexdigest()[:32]


class Result(msgspec.Struct):
    id: str
    streams: dict[str, str]
    online_sessions: int
    duplicate: bool = False


#: What became of one item of a publish.
Outcome = Result | PushError


class Publisher:
    def __init__(self, node: Node) -> None:
        self._node = node

    async def publish(self, items: list[Outgoing], caller: str = "") -> list[Result]:
        """:meth:`attempt`, for callers that want all or an error: raises the first item's
        failure unless every item was published."""
        outcomes = await self.attempt(items, caller)
        for outcome in outcomes:
            if isinstance(outcome, PushError):
                raise outcome
        return [o for o in outcomes if isinstance(o, Result)]

    async def attempt(self, items: list[Outgoing], caller: str = "") -> list[Outcome]:
        """Publish ``items`` in order; what became of each. ``caller``: the scope of their
        idempotency keys (the API key's name; "" for the node's own pages)."""
        node = self._node
        settings = node.settings
        now_ms = int(time.time() * 1000)
        sends = tracing.sends(node.id)
        publications = []
        timers: list[tuple[Escalation, float]] = []
        for item in items:
            ttl = min(item.ttl, settings.history_ttl)
            key = item.idempotency_key
            scoped = None if key is None else f"{caller}:{key}"
            message_id = new_id(now_ms, home(item.streams, scoped))
            message = Message(
                id=message_id,
                event=item.event,
                data=msgspec.Raw(item.data),
                ts=now_ms,
                ack=item.ack,
                expires=now_ms + ttl * 1000,
                traceparent=sends.start(message_id, item.event, item.streams),
            )
            timers += node.escalator.plan(message, item.streams, item.push)
            if scoped is None:
                publications.append(Publication(message, item.streams))
            else:
                publications.append(Publication(message, item.streams, scoped, item.fingerprint()))
        try:
            # Timers first: a message appended is never without its timer; the timer of one
            # that was not (or was a duplicate) finds no trail when it fires and is dropped.
            if timers:
                await node.broker.escalations.schedule(timers)
            placed = await node.broker.publish(publications, node.id)
        except BrokerError as exc:
            sends.fail(exc)
            return [exc] * len(items)
        sends.end()
        outcomes: list[Outcome] = []
        fresh = 0
        for item, publication, outcome in zip(items, publications, placed, strict=True):
            if not isinstance(outcome, Placed):
                outcomes.append(outcome)
            elif outcome.duplicate:
                outcomes.append(self._again(item, publication, outcome))
            else:
                fresh += 1
                m = publication.message
                offsets = outcome.offsets
                node.accounting.record(
                    Published(m.id, m.event, m.ts / 1000, m.expires / 1000, m.ack, offsets)
                )
                outcomes.append(Result(m.id, offsets, node.index.count(item.streams)))
        metrics.published.inc(fresh)
        return outcomes

    @staticmethod
    def _again(item: Outgoing, publication: Publication, placed: Placed) -> Outcome:
        """The answer to an item whose key was bound already."""
        if placed.fingerprint != publication.fingerprint:
            return IdempotencyConflict(
                f"idempotency key {item.idempotency_key!r} was used for another request"
                f" (message {placed.id}); use a new key for a new message"
            )
        return Result(placed.id, placed.offsets, 0, duplicate=True)
