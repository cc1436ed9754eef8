"""Push subscriptions, escalation timers and the webhook queue in Redis (keys in
:mod:`pushsvc.broker.keys`).

A timer is a member of a sorted set scored by when it is due. A claim reads the due members,
then one script moves those still due ahead by the lease and returns their hashes: whoever's
script runs first gets a member, everyone else sees it moved. A claimer that dies leaves the
member to fall due again when its lease ends.
"""

from __future__ import annotations

import time

import msgspec

from pushsvc.broker.base import (
    Claimed,
    Escalation,
    Escalations,
    Subscription,
    WebhookDelivery,
    WebhookFailure,
    WebhookQueue,
)
from pushsvc.broker.keys import Keyspace
from pushsvc.broker.redis.link import Link
from pushsvc.broker.redis.mux import Arg
from pushsvc.broker.redis.partitions import Partitions, together
from pushsvc.broker.redis.scripts import CLAIM, ENQUEUE, SCHEDULE, SEEN, SETTLE, UNSUBSCRIBE

_encode = msgspec.json.Encoder().encode
_subscription = msgspec.json.Decoder(Subscription)
_escalation = msgspec.json.Decoder(Escalation)
_acked = msgspec.json.Decoder(tuple[str, float])
_failure = msgspec.json.Decoder(WebhookFailure)


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


class RedisEscalations(Escalations):
    """Subscriptions and timers on the control link; the trail's push marks in the message's
    home partition."""

    def __init__(self, parts: Partitions, retention: float, keep: float) -> None:
        self._parts = parts
        self._link = parts.control
        self._keys = parts.keys
        self._retention = max(1, int(retention))
        self._keep = keep  # seconds an escalation's hash outlives its message

    async def subscribe(self, user: str, device: str, subscription: Subscription) -> None:
        key = self._keys.push_subscriptions(user)
        await self._link.pipeline([
            ("HSET", key, device, _encode(subscription)), ("EXPIRE", key, self._retention),
        ])  # fmt: skip

    async def unsubscribe(self, user: str, device: str, endpoint: str | None = None) -> None:
        key = self._keys.push_subscriptions(user)
        await self._link.run(UNSUBSCRIBE, [key], [device, endpoint or ""])

    async def subscriptions(self, user: str) -> dict[str, Subscription]:
        key = self._keys.push_subscriptions(user)
        flat = await self._link.call("HGETALL", key)
        out: dict[str, Subscription] = {}
        stale: list[Arg] = []
        horizon = _now() - self._retention
        for device, raw in zip(flat[::2], flat[1::2], strict=True):
            sub = _subscription.decode(raw)
            if sub.seen < horizon:
                stale.append(device)
            else:
                out[device.decode()] = sub
        if stale:
            await self._link.call("HDEL", key, *stale)
        return out

    async def seen(self, user: str, device: str, at: float) -> None:
        key = self._keys.push_subscriptions(user)
        await self._link.run(SEEN, [key], [device, repr(at), self._retention])

    async def schedule(self, items: list[tuple[Escalation, float]]) -> None:
        if not items:
            return
        keys: list[Arg] = [self._keys.escalations]
        args: list[Arg] = []
        for escalation, due in items:
            name = escalation.name
            keys.append(self._keys.escalation(name))
            step = "after" if escalation.after else "final"
            expire_at = _ms(escalation.expires_at + self._keep)
            args += (name, _encode(escalation), step, _ms(due), expire_at)
        await self._link.run(SCHEDULE, keys, args)

    async def claim(self, now: float, limit: int, lease: float) -> list[Claimed]:
        zset = self._keys.escalations
        due = await self._link.call("ZRANGEBYSCORE", zset, "-inf", _ms(now), "LIMIT", 0, limit)
        if not due:
            return []
        keys: list[Arg] = [zset, *(self._keys.escalation(m.decode()) for m in due)]
        flat = await self._link.run(CLAIM, keys, [_ms(now), _ms(now + lease), *due])
        out = []
        for fields_flat in flat[1::2]:
            fields = dict(zip(fields_flat[::2], fields_flat[1::2], strict=True))
            raw = fields.get(b"r")
            if raw is None:
                continue
            acked = fields.get(b"k")
            out.append(Claimed(
                escalation=_escalation.decode(raw),
                step=fields.get(b"f", b"after").decode(),
                acked=_acked.decode(acked) if acked is not None else None,
                pushed={f[2:].decode(): float(v) for f, v in fields.items() if f[:2] == b"w:"},
                attempts=int(fields.get(b"n", 0)),
            ))  # fmt: skip
        return out

    async def settle(self, acks: list[tuple[str, str, str, float]]) -> None:
        if not acks:
            return
        keys: list[Arg] = [self._keys.escalations]
        args: list[Arg] = [_ms(_now())]
        seen: set[str] = set()
        for message_id, user, device, at in acks:
            name = f"{message_id}/{user}"
            if name in seen:
                continue
            seen.add(name)
            keys.append(self._keys.escalation(name))
            args += (name, _encode((device, at)))
        await self._link.run(SETTLE, keys, args)

    async def pushed(self, name: str, message_id: str, device: str, at: float) -> None:
        field = "w:" + device
        marks = [
            ("HSETNX", self._keys.escalation(name), field, repr(at)),
            ("HSETNX", self._keys.trail(message_id), field, repr(at)),
        ]
        trails = self._parts.for_id(message_id)
        if trails is self._link:  # one server
            await self._link.pipeline(marks)
        else:
            await together([self._link.pipeline(marks[:1]), trails.pipeline(marks[1:])])

    async def reschedule(self, name: str, due: float, step: str, attempts: int) -> None:
        await self._link.pipeline([
            ("HSET", self._keys.escalation(name), "f", step, "n", attempts),
            ("ZADD", self._keys.escalations, "XX", _ms(due), name),
        ])  # fmt: skip

    async def finish(self, name: str) -> None:
        await self._link.pipeline([
            ("ZREM", self._keys.escalations, name), ("DEL", self._keys.escalation(name)),
        ])  # fmt: skip

    async def pending(self) -> int:
        return int(await self._link.call("ZCARD", self._keys.escalations))


class RedisWebhookQueue(WebhookQueue):
    def __init__(self, link: Link, keys: Keyspace) -> None:
        self._link = link
        self._keys = keys

    async def enqueue(
        self, event_id: str, body: bytes, urls: list[str], now: float, keep: float
    ) -> bool:
        keys: list[Arg] = [self._keys.webhooks, self._keys.webhook(event_id)]
        members = [f"{event_id} {url}" for url in urls]
        args: list[Arg] = [body, repr(now), max(1, int(keep)), _ms(now), *members]
        return bool(await self._link.run(ENQUEUE, keys, args))

    async def claim(self, now: float, limit: int, lease: float) -> list[WebhookDelivery]:
        zset = self._keys.webhooks
        due = await self._link.call("ZRANGEBYSCORE", zset, "-inf", _ms(now), "LIMIT", 0, limit)
        if not due:
            return []
        keys: list[Arg] = [zset]
        keys += [self._keys.webhook(member.decode().partition(" ")[0]) for member in due]
        flat = await self._link.run(CLAIM, keys, [_ms(now), _ms(now + lease), *due])
        out = []
        for member, fields_flat in zip(flat[::2], flat[1::2], strict=True):
            event_id, _, url = member.decode().partition(" ")
            fields = dict(zip(fields_flat[::2], fields_flat[1::2], strict=True))
            out.append(WebhookDelivery(
                event_id=event_id, url=url, body=fields[b"b"], created=float(fields[b"c"]),
                attempts=int(fields.get(b"n:" + url.encode(), 0)),
            ))  # fmt: skip
        return out

    async def delivered(self, delivery: WebhookDelivery) -> None:
        await self._link.call("ZREM", self._keys.webhooks, f"{delivery.event_id} {delivery.url}")

    async def failed(
        self, delivery: WebhookDelivery, failure: WebhookFailure, retry_at: float | None
    ) -> None:
        member = f"{delivery.event_id} {delivery.url}"
        again = (
            ("ZADD", self._keys.webhooks, "XX", _ms(retry_at), member)
            if retry_at is not None
            else ("ZREM", self._keys.webhooks, member)
        )
        await self._link.pipeline([
            ("HSET", self._keys.webhook_failures, delivery.url, _encode(failure)),
            ("HINCRBY", self._keys.webhook(delivery.event_id), "n:" + delivery.url, 1),
            again,
        ])  # fmt: skip

    async def depth(self) -> int:
        return int(await self._link.call("ZCARD", self._keys.webhooks))

    async def failures(self) -> dict[str, WebhookFailure]:
        flat = await self._link.call("HGETALL", self._keys.webhook_failures)
        return {
            url.decode(): _failure.decode(raw)
            for url, raw in zip(flat[::2], flat[1::2], strict=True)
        }


def _now() -> float:
    return time.time()
