"""Delivery trails and idempotency keys in Redis.

A trail is one hash per message (fields in :mod:`pushsvc.broker.keys`). :meth:`RedisLedger.record`
sends a batch in one round trip, one script call per :data:`CHUNK` records. Every write commutes
(first wins, highest wins, or a sum), so records from different nodes may arrive in any order and
a Sent that beats its Published still ends up in the trail. A trail expires with its message plus
``retention`` seconds; until its Published record arrives it is kept ``early_ttl`` seconds.
"""

from __future__ import annotations

from typing import Any

import msgspec

from pushsvc.broker.base import (
    Acked,
    Idempotency,
    Ledger,
    LedgerEvent,
    Published,
    Sent,
    SentCount,
)
from pushsvc.broker.keys import Keyspace
from pushsvc.broker.redis.link import Arg, Link
from pushsvc.broker.redis.scripts import ACKED, CLAIM, LEDGER
from pushsvc.core.trail import Delivery, Trail

CHUNK = 1000  # records per script call: bounds how long one call holds the server

_encode = msgspec.json.Encoder().encode
_published = msgspec.json.Decoder(Published)
_who = msgspec.json.Decoder(tuple[str, str])


class RedisLedger(Ledger):
    def __init__(self, link: Link, keys: Keyspace, retention: float, early_ttl: float) -> None:
        self._link = link
        self._keys = keys
        self._retention = retention
        self._early_ttl = max(1, int(early_ttl))

    async def record(self, events: list[LedgerEvent]) -> None:
        calls: list[tuple[list[Arg], list[Arg]]] = []
        for start in range(0, len(events), CHUNK):
            keys: list[Arg] = []
            args: list[Arg] = [self._early_ttl]
            for event in events[start : start + CHUNK]:
                keys.append(self._keys.trail(event.message_id))
                args += self._args(event)
            calls.append((keys, args))
        if calls:
            await self._link.run_all(LEDGER, calls)

    def _args(self, event: LedgerEvent) -> tuple[Arg, Arg, Arg, Arg, Arg]:
        """The five script values of one record (see ``scripts.LEDGER``)."""
        match event:
            case Published():
                expire_at = int((event.expires + self._retention) * 1000)
                return ("p", _encode(event), expire_at, "", "")
            case Sent():
                who = _encode((event.device, event.node))
                return ("s", event.session, who, repr(event.at), event.attempt)
            case Acked():
                who = _encode((event.device, event.node))
                return ("a", event.session, who, repr(event.at), event.device)
            case SentCount():
                return ("c", event.node, event.count, "", "")

    async def trail(self, message_id: str) -> Trail | None:
        flat = await self._link.call("HGETALL", self._keys.trail(message_id))
        fields: dict[bytes, bytes] = dict(zip(flat[::2], flat[1::2], strict=True))
        raw = fields.pop(b"p", None)
        if raw is None:
            return None
        p = _published.decode(raw)
        trail = Trail(p.message_id, p.event, p.ts, p.expires, p.ack, dict(p.streams))
        parts: dict[str, dict[str, Any]] = {}
        for field, value in fields.items():
            kind, name = field[:2], field[2:].decode()
            if kind == b"c:":
                trail.sent_by_node[name] = int(value)
            elif kind in (b"d:", b"s:", b"n:", b"a:"):
                parts.setdefault(name, {})[kind.decode()] = value
        for session, got in parts.items():
            if "d:" not in got:
                continue
            device, node = _who.decode(got["d:"])
            sent_at = float(got["s:"]) if "s:" in got else None
            acked_at = float(got["a:"]) if "a:" in got else None
            attempts = int(got["n:"]) if "n:" in got else 0
            if acked_at is not None:
                attempts = max(attempts, 1)
            trail.deliveries[session] = Delivery(device, session, node, sent_at, acked_at, attempts)
        order = sorted(trail.deliveries.values(), key=_delivery_order)
        trail.deliveries = {d.session: d for d in order}
        return trail

    async def acked_ids(self, device: str, message_ids: list[str]) -> set[str]:
        if not message_ids:
            return set()
        chunks = [message_ids[i : i + CHUNK] for i in range(0, len(message_ids), CHUNK)]
        calls = [([self._keys.trail(m) for m in chunk], [device]) for chunk in chunks]
        replies = await self._link.run_all(ACKED, calls)
        flags = [flag for reply in replies for flag in reply]
        return {m for m, flag in zip(message_ids, flags, strict=True) if flag}


def _delivery_order(d: Delivery) -> tuple[float, str]:
    first = d.sent_at if d.sent_at is not None else d.acked_at
    return (first if first is not None else 0.0, d.session)


class RedisIdempotency(Idempotency):
    def __init__(self, link: Link, keys: Keyspace) -> None:
        self._link = link
        self._keys = keys

    async def claim(self, key: str, ttl: float) -> bytes | None:
        held = await self._link.run(CLAIM, [self._keys.idempotency(key)], [_ms(ttl)])
        return None if held is None else bytes(held)

    async def settle(self, key: str, result: bytes, ttl: float) -> None:
        await self._link.call("SET", self._keys.idempotency(key), result, "PX", _ms(ttl))

    async def release(self, key: str) -> None:
        await self._link.call("DEL", self._keys.idempotency(key))


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))
