"""The publish path: from an accepted request to an appended, announced message.

:meth:`Publisher.publish` gives each message its id and times, honours idempotency keys, hands the
batch to :meth:`Broker.publish` (history + bus, atomically per message), writes the trail's first
record, and returns one result per item in order.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import TYPE_CHECKING

import msgspec

from pushsvc.broker.base import Published
from pushsvc.errors import IdempotencyConflict
from pushsvc.telemetry import metrics, tracing
from pushsvc.types import Message

if TYPE_CHECKING:
    from pushsvc.node.gateway import Node

IDEMPOTENCY_WAIT = 5.0
CLAIM_TTL = 30.0  # an open claim outlives a crashed publisher by this much, no more


def new_id(now_ms: int) -> str:
    """A message id: 12 hex digits of publish time in ms, then 20 random hex digits.

    Unique, not secret (reading a message's trail needs the API key; a client can only ack what
    it was sent): Python's generator, seeded from the OS and re-seeded in a forked child, needs no
    system call per id."""
    return f"{now_ms:012x}{random.getrandbits(80):020x}"


class Outgoing(msgspec.Struct, frozen=True, gc=False):
    """One message to publish, already validated: its streams and its encoded ``data``."""

    streams: list[str]
    event: str
    data: bytes
    ttl: int
    ack: bool
    idempotency_key: str | None = None


class Result(msgspec.Struct):
    id: str
    streams: dict[str, str]
    online_sessions: int
    duplicate: bool = False


class Publisher:
    def __init__(self, node: Node) -> None:
        self._node = node

    async def publish(self, items: list[Outgoing]) -> list[Result]:
        """Publish ``items`` in order. Raises BrokerUnavailable when the broker is down and
        IdempotencyConflict when a key is still being published by another request."""
        node = self._node
        settings = node.settings
        now_ms = int(time.time() * 1000)
        results: list[Result | None] = [None] * len(items)
        fresh: list[tuple[int, Message, Outgoing]] = []
        claimed: list[str] = []
        first_of: dict[str, int] = {}  # key -> index of its first item in this batch
        repeats: list[tuple[int, int]] = []
        sends = tracing.sends(node.id)
        try:
            for i, item in enumerate(items):
                key = item.idempotency_key
                if key is not None and key in first_of:
                    repeats.append((i, first_of[key]))
                    continue
                if key is not None:
                    first_of[key] = i
                    earlier = await self._claim(key)
                    if earlier is not None:
                        results[i] = earlier
                        continue
                    claimed.append(key)
                ttl = min(item.ttl, settings.history_ttl)
                message_id = new_id(now_ms)
                message = Message(
                    id=message_id,
                    event=item.event,
                    data=msgspec.Raw(item.data),
                    ts=now_ms,
                    ack=item.ack,
                    expires=now_ms + ttl * 1000,
                    traceparent=sends.start(message_id, item.event, item.streams),
                )
                fresh.append((i, message, item))
            placed = await node.broker.publish([(m, it.streams) for _, m, it in fresh], node.id)
        except BaseException as exc:
            sends.fail(exc)
            for held in claimed:
                await node.broker.idempotency.release(held)
            raise
        sends.end()
        for (i, message, item), offsets in zip(fresh, placed, strict=True):
            node.accounting.record(
                Published(message.id, message.event, message.ts / 1000, message.expires / 1000,
                          message.ack, offsets)
            )  # fmt: skip
            result = Result(message.id, offsets, node.index.count(item.streams))
            results[i] = result
            if item.idempotency_key is not None:
                await node.broker.idempotency.settle(
                    item.idempotency_key,
                    msgspec.json.encode(Result(message.id, offsets, 0)),
                    settings.idempotency_ttl,
                )
        for i, first in repeats:
            done = results[first]
            assert done is not None
            results[i] = Result(done.id, done.streams, done.online_sessions, duplicate=True)
        metrics.published.inc(len(fresh))
        return [r for r in results if r is not None]

    async def _claim(self, key: str) -> Result | None:
        store = self._node.broker.idempotency
        deadline = time.monotonic() + IDEMPOTENCY_WAIT
        while True:
            held = await store.claim(key, CLAIM_TTL)
            if held is None:
                return None
            if held:
                earlier = msgspec.json.decode(held, type=Result)
                earlier.duplicate = True
                return earlier
            if time.monotonic() > deadline:
                raise IdempotencyConflict(f"idempotency key {key!r} is being published right now")
            await asyncio.sleep(0.02)
