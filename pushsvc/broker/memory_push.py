"""The embedded broker's push subscriptions, escalation timers and webhook queue.

Timers and deliveries are kept in a heap of (due, name) with lazy deletion: an entry whose due
time no longer matches is skipped when popped, so claiming is O(log n) per timer.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from pushsvc.broker.base import (
    Claimed,
    Escalation,
    Escalations,
    Subscription,
    WebhookDelivery,
    WebhookFailure,
    WebhookQueue,
)
from pushsvc.core.trail import Trail

Clock = Callable[[], float]


class Timers:
    """Names due at times; :meth:`take` pops the due ones (lazy deletion)."""

    def __init__(self) -> None:
        self.due: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def set(self, name: str, at: float) -> None:
        self.due[name] = at
        heapq.heappush(self._heap, (at, name))

    def drop(self, name: str) -> None:
        self.due.pop(name, None)

    def take(self, now: float, limit: int) -> list[str]:
        out: list[str] = []
        heap = self._heap
        while heap and heap[0][0] <= now and len(out) < limit:
            at, name = heapq.heappop(heap)
            if self.due.get(name) == at:
                out.append(name)
        return out


@dataclass
class _Held:
    escalation: Escalation
    step: str
    acked: tuple[str, float] | None = None
    pushed: dict[str, float] = field(default_factory=dict)
    attempts: int = 0


class MemoryEscalations(Escalations):
    def __init__(
        self, retention: float, trails: Callable[[str], Trail | None], clock: Clock
    ) -> None:
        self._retention = retention
        self._trails = trails
        self._clock = clock
        self._subs: dict[str, dict[str, Subscription]] = {}
        self._held: dict[str, _Held] = {}
        self._timers = Timers()

    async def subscribe(self, user: str, device: str, subscription: Subscription) -> None:
        self._subs.setdefault(user, {})[device] = subscription

    async def unsubscribe(self, user: str, device: str, endpoint: str | None = None) -> None:
        held = self._subs.get(user, {})
        sub = held.get(device)
        if sub is not None and endpoint in (None, sub.endpoint):
            del held[device]
            if not held:
                self._subs.pop(user, None)

    async def subscriptions(self, user: str) -> dict[str, Subscription]:
        held = self._subs.get(user, {})
        horizon = self._clock() - self._retention
        for device in [d for d, sub in held.items() if sub.seen < horizon]:
            del held[device]
        return dict(held)

    async def seen(self, user: str, device: str, at: float) -> None:
        held = self._subs.get(user, {})
        sub = held.get(device)
        if sub is not None and sub.seen < at:
            held[device] = Subscription(
                endpoint=sub.endpoint, p256dh=sub.p256dh, auth=sub.auth, seen=at
            )

    async def schedule(self, items: list[tuple[Escalation, float]]) -> None:
        for escalation, due in items:
            name = escalation.name
            if name in self._held:
                continue
            self._held[name] = _Held(escalation, "after" if escalation.after else "final")
            self._timers.set(name, due)

    async def claim(self, now: float, limit: int, lease: float) -> list[Claimed]:
        out = []
        for name in self._timers.take(now, limit):
            held = self._held.get(name)
            if held is None:
                continue
            self._timers.set(name, now + lease)
            out.append(Claimed(
                escalation=held.escalation, step=held.step, acked=held.acked,
                pushed=dict(held.pushed), attempts=held.attempts,
            ))  # fmt: skip
        return out

    async def settle(self, acks: list[tuple[str, str, str, float]]) -> None:
        now = self._clock()
        for message_id, user, device, at in acks:
            name = f"{message_id}/{user}"
            held = self._held.get(name)
            if held is None or held.acked is not None:
                continue
            held.acked = (device, at)
            if name in self._timers.due:
                self._timers.set(name, now)

    async def pushed(self, name: str, message_id: str, device: str, at: float) -> None:
        held = self._held.get(name)
        if held is not None:
            held.pushed.setdefault(device, at)
        trail = self._trails(message_id)
        if trail is not None:
            trail.pushed.setdefault(device, at)

    async def reschedule(self, name: str, due: float, step: str, attempts: int) -> None:
        held = self._held.get(name)
        if held is not None:
            held.step, held.attempts = step, attempts
            self._timers.set(name, due)

    async def finish(self, name: str) -> None:
        self._held.pop(name, None)
        self._timers.drop(name)

    async def pending(self) -> int:
        return len(self._held)


class MemoryWebhookQueue(WebhookQueue):
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._taken: dict[str, float] = {}  # event id -> until
        self._taken_order: deque[tuple[float, str]] = deque()  # (until, id): ``keep`` is fixed
        self._owed: dict[str, WebhookDelivery] = {}  # "<event id> <url>" -> delivery
        self._timers = Timers()
        self._failures: dict[str, WebhookFailure] = {}

    async def enqueue(
        self, event_id: str, body: bytes, urls: list[str], now: float, keep: float
    ) -> bool:
        order = self._taken_order
        while order and order[0][0] <= now:
            self._taken.pop(order.popleft()[1], None)
        if event_id in self._taken:
            return False
        self._taken[event_id] = now + keep
        order.append((now + keep, event_id))
        for url in urls:
            name = f"{event_id} {url}"
            self._owed[name] = WebhookDelivery(event_id=event_id, url=url, body=body, created=now)
            self._timers.set(name, now)
        return True

    async def claim(self, now: float, limit: int, lease: float) -> list[WebhookDelivery]:
        out = []
        for name in self._timers.take(now, limit):
            delivery = self._owed.get(name)
            if delivery is not None:
                self._timers.set(name, now + lease)
                out.append(delivery)
        return out

    async def delivered(self, delivery: WebhookDelivery) -> None:
        name = f"{delivery.event_id} {delivery.url}"
        self._owed.pop(name, None)
        self._timers.drop(name)

    async def failed(
        self, delivery: WebhookDelivery, failure: WebhookFailure, retry_at: float | None
    ) -> None:
        self._failures[delivery.url] = failure
        name = f"{delivery.event_id} {delivery.url}"
        held = self._owed.get(name)
        if held is None:
            return
        held.attempts += 1
        if retry_at is None:
            await self.delivered(delivery)
        else:
            self._timers.set(name, retry_at)

    async def depth(self) -> int:
        return len(self._owed)

    async def failures(self) -> dict[str, WebhookFailure]:
        return dict(self._failures)
