"""Delivery trails, the monitor lease and API keys' rate buckets in Redis.

A trail is one hash per message (fields in :mod:`pushsvc.broker.keys`). :meth:`RedisLedger.record`
sends a batch in one round trip, one script call per :data:`CHUNK` records. Every write commutes
(first wins, highest wins, or a sum), so records from different nodes may arrive in any order and
a Sent that beats its Published still ends up in the trail. A trail expires with its message plus
``retention`` seconds; until its Published record arrives it is kept ``early_ttl`` seconds.

The same script keeps the delivery accounting (``{P}tally:<bucket>``, ``{P}msgs:<bucket>``, in
the message's home partition: the monitor's reads sum the partitions): the
trail's per-device markers decide whether a record is the first of its (message, device) pair,
and the counts are summed in the script, so the accounting costs no round trip of its own. The
accounting keys live ``retention`` seconds after their last write. Which record moves which counter
is stated in :class:`pushsvc.core.accounting.Tallies`; the script follows it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import msgspec

from pushsvc.broker.base import (
    Accepted,
    Acked,
    Expected,
    Expired,
    Lease,
    Ledger,
    LedgerEvent,
    Pair,
    Published,
    RateLimits,
    Sent,
    SentCount,
    Tally,
    bucket_of,
)
from pushsvc.broker.keys import PARTITIONS, Keyspace, id_partition
from pushsvc.broker.redis.link import Link
from pushsvc.broker.redis.mux import Arg
from pushsvc.broker.redis.partitions import Partitions, together
from pushsvc.broker.redis.scripts import ACKED, LEASE, LEDGER, RATE, RELEASE
from pushsvc.core.trail import Delivery, Trail

CHUNK = 1000  # records per script call: bounds how long one call holds the server

_T = TypeVar("_T")

_encode = msgspec.json.Encoder().encode
_published = msgspec.json.Decoder(Published)
_who = msgspec.json.Decoder(tuple[str, str])
_first_sent = msgspec.json.Decoder(tuple[str, str, float | None])
_first_ack = msgspec.json.Decoder(tuple[str, str, float])


class RedisLedger(Ledger):
    """Each record goes to its message's home partition, where the trail and that partition's
    accounting are; the monitor's reads sum the partitions."""

    def __init__(self, parts: Partitions, retention: float, early_ttl: float) -> None:
        self._parts = parts
        self._keys = parts.keys
        self._retention = retention
        self._early_ttl = max(1, int(early_ttl))
        self._bucket_ttl = max(1, int(retention))

    async def record(self, events: list[LedgerEvent]) -> None:
        groups: dict[int, list[LedgerEvent]] = {}
        for event in events:
            groups.setdefault(self._group(event.message_id), []).append(event)
        await together([
            self._parts.link(group).run_all(LEDGER, self._calls(batch))
            for group, batch in groups.items()
        ])  # fmt: skip

    def _calls(self, events: list[LedgerEvent]) -> list[tuple[list[Arg], list[Arg]]]:
        calls: list[tuple[list[Arg], list[Arg]]] = []
        keys_of = self._keys
        for start in range(0, len(events), CHUNK):
            # (bucket, partition) -> its number in this call (1-based)
            numbers: dict[tuple[int, int], int] = {}
            trails: list[Arg] = []
            values: list[Arg] = []
            for event in events[start : start + CHUNK]:
                bucket = bucket_of(event.message_id)
                number = 0
                if bucket is not None and not isinstance(event, Published | SentCount):
                    where = (bucket, self._group(event.message_id))
                    number = numbers.setdefault(where, len(numbers) + 1)
                trails.append(keys_of.trail(event.message_id))
                values += self._args(event)
                values.append(number)
            keys: list[Arg] = []
            for bucket, partition in numbers:  # in number order: dicts keep insertion order
                keys += (
                    keys_of.tally(bucket, partition),
                    keys_of.bucket_messages(bucket, partition),
                )
            head: list[Arg] = [self._early_ttl, self._bucket_ttl, len(numbers)]
            calls.append((keys + trails, head + values))
        return calls

    def _group(self, message_id: str) -> int:
        return self._parts.group(id_partition(message_id))

    def _args(self, event: LedgerEvent) -> tuple[Arg, Arg, Arg, Arg, Arg, Arg, Arg, Arg]:
        """The kind and seven script values of one record (see ``scripts.LEDGER``)."""
        match event:
            case Published():
                expire_at = int((event.expires + self._retention) * 1000)
                return ("p", _encode(event), expire_at, "", "", "", "", "")
            case Sent():
                who = _encode((event.device, event.node))
                first = _encode((event.session, event.node, event.at))
                return ("s", event.session, who, repr(event.at), event.attempt, event.device,
                        event.node, first)  # fmt: skip
            case Acked():
                who = _encode((event.device, event.node))
                first = _encode((event.session, event.node, event.at))
                return ("a", event.session, who, repr(event.at), event.device, event.node,
                        first, "")  # fmt: skip
            case SentCount():
                return ("c", event.node, event.count, "", "", "", "", "")
            case Accepted():
                return ("A", event.message_id, event.node, "", "", "", "", "")
            case Expected():
                who = _encode((event.device, event.node))
                first = _encode((event.session, event.node, None))
                return ("e", event.session, who, event.device, event.node, first, "", "")
            case Expired():
                return ("x", event.device, event.node, "", "", "", "", "")

    async def tallies(self, buckets: list[int]) -> dict[int, Tally]:
        """The tallies of ``buckets``, summed over the partitions."""
        wanted = [(b, k) for b in buckets for k in range(PARTITIONS)]
        replies = await self._each(wanted, lambda w: ("HGETALL", self._keys.tally(*w)), w_group)
        out: dict[int, Tally] = {bucket: {} for bucket in buckets}
        for (bucket, _), flat in zip(wanted, replies, strict=True):
            tally = out[bucket]
            for field, value in zip(flat[::2], flat[1::2], strict=True):
                counter, _, node = field.decode().partition(":")
                counts = tally.setdefault(node, {})
                counts[counter] = counts.get(counter, 0) + int(value)
        return out

    async def bucket_messages(self, bucket: int) -> list[str]:
        wanted = [(bucket, k) for k in range(PARTITIONS)]
        replies = await self._each(
            wanted, lambda w: ("SMEMBERS", self._keys.bucket_messages(*w)), w_group
        )
        return sorted({m.decode() for members in replies for m in members})

    async def pairs(self, message_ids: list[str]) -> list[Pair]:
        out: list[Pair] = []
        for start in range(0, len(message_ids), CHUNK):
            chunk = message_ids[start : start + CHUNK]
            replies = await self._each(
                chunk, lambda m: ("HGETALL", self._keys.trail(m)), id_partition
            )
            for message_id, flat in zip(chunk, replies, strict=True):
                out += _pairs_of(message_id, dict(zip(flat[::2], flat[1::2], strict=True)))
        return out

    async def _each(
        self,
        items: Sequence[_T],
        command: Callable[[_T], tuple[Arg, ...]],
        partition: Callable[[_T], int],
    ) -> list[Any]:
        """The reply to ``command(item)`` for each of ``items``, sent to the link of
        ``partition(item)``: one round trip per group, the groups at once."""
        groups: dict[int, list[int]] = {}
        for n, item in enumerate(items):
            groups.setdefault(self._parts.group(partition(item)), []).append(n)
        replies = await together([
            self._parts.link(group).pipeline([command(items[n]) for n in indices])
            for group, indices in groups.items()
        ])  # fmt: skip
        out: list[Any] = [None] * len(items)
        for indices, group_replies in zip(groups.values(), replies, strict=True):
            for n, reply in zip(indices, group_replies, strict=True):
                out[n] = reply
        return out

    async def trail(self, message_id: str) -> Trail | None:
        link = self._parts.for_id(message_id)
        flat = await link.call("HGETALL", self._keys.trail(message_id))
        fields: dict[bytes, bytes] = dict(zip(flat[::2], flat[1::2], strict=True))
        raw = fields.pop(b"p", None)
        if raw is None:
            return None
        p = _published.decode(raw)
        trail = Trail(p.message_id, p.event, p.ts, p.expires, p.ack, dict(p.streams))
        for field, value in fields.items():
            if field[:2] == b"c:":
                trail.sent_by_node[field[2:].decode()] = int(value)
            elif field[:2] == b"w:":
                trail.pushed[field[2:].decode()] = float(value)
        trail.deliveries = _deliveries(fields)[0]
        return trail

    async def acked_ids(self, device: str, message_ids: list[str]) -> set[str]:
        groups: dict[int, list[str]] = {}
        for message_id in message_ids:
            groups.setdefault(self._group(message_id), []).append(message_id)
        replies = await together([
            self._parts.link(group).run_all(ACKED, [
                ([self._keys.trail(m) for m in ids[i : i + CHUNK]], [device])
                for i in range(0, len(ids), CHUNK)
            ])
            for group, ids in groups.items()
        ])  # fmt: skip
        acked: set[str] = set()
        for ids, group_replies in zip(groups.values(), replies, strict=True):
            flags = [flag for reply in group_replies for flag in reply]
            acked.update(m for m, flag in zip(ids, flags, strict=True) if flag)
        return acked


def w_group(wanted: tuple[int, int]) -> int:
    """The partition of a (bucket, partition) pair."""
    return wanted[1]


def _deliveries(fields: dict[bytes, bytes]) -> tuple[dict[str, Delivery], dict[str, str]]:
    """The deliveries of one trail hash by session, and the node that owes each expected device
    (``e:<device>``).

    A session's details are in its ``d:`` / ``s:`` / ``n:`` / ``a:`` fields, or, for the
    session a device was first sent (or owed) the message on and the one it first acked from, in
    the value of ``e:<device>`` (``[session, node, sent_at]``) and ``k:<device>`` (``[session, node,
    acked_at]``). Earliest times and the highest attempt count win wherever both say.
    """
    parts: dict[str, dict[str, Any]] = {}
    owners: dict[str, str] = {}
    for field, value in fields.items():
        kind, name = field[:2], field[2:].decode()
        if kind in (b"e:", b"k:") and value[:1] != b"[":
            if kind == b"e:":  # written by an older node: the owing node only
                owners[name] = value.decode()
        elif kind == b"e:":
            session, node, sent_at = _first_sent.decode(value)
            owners[name] = node
            part = parts.setdefault(session, {})
            part.setdefault("device", name)
            part.setdefault("node", node)
            if sent_at is not None:
                part["s"] = min(part.get("s", sent_at), sent_at)
                part["n"] = max(part.get("n", 1), 1)
        elif kind == b"k:":
            session, node, acked_at = _first_ack.decode(value)
            part = parts.setdefault(session, {})
            part.setdefault("device", name)
            part.setdefault("node", node)
            part["a"] = min(part.get("a", acked_at), acked_at)
        elif kind == b"d:":
            part = parts.setdefault(name, {})
            part["device"], part["node"] = _who.decode(value)
        elif kind == b"s:":
            part = parts.setdefault(name, {})
            part["s"] = min(part.get("s", float(value)), float(value))
        elif kind == b"n:":
            part = parts.setdefault(name, {})
            part["n"] = max(part.get("n", 0), int(value))
        elif kind == b"a:":
            part = parts.setdefault(name, {})
            part["a"] = min(part.get("a", float(value)), float(value))
    found = []
    for session, part in parts.items():
        device = part.get("device")
        if device is None:
            continue
        acked = part.get("a")
        attempts = part.get("n", 0)
        found.append(Delivery(
            device, session, part.get("node") or owners.get(device, ""), part.get("s"), acked,
            max(attempts, 1) if acked is not None else attempts,
        ))  # fmt: skip
    found.sort(key=_delivery_order)
    return {d.session: d for d in found}, owners


def _pairs_of(message_id: str, fields: dict[bytes, bytes]) -> list[Pair]:
    """The expected pairs of one trail hash (``e:`` markers), with what its sessions say."""
    raw = fields.get(b"p")
    if raw is None:
        return []
    expires_at = _published.decode(raw).expires
    deliveries, owners = _deliveries(fields)
    out = []
    for device, owner in sorted(owners.items()):
        mine = [d for d in deliveries.values() if d.device == device]
        out.append(Pair(
            message_id=message_id, device=device, node=owner,
            sent=any(d.sent_at is not None for d in mine),
            acked=b"k:" + device.encode() in fields, expires_at=expires_at,
            attempts=max((d.attempts for d in mine), default=0),
            nodes=tuple(sorted({owner, *(d.node for d in mine)})),
        ))  # fmt: skip
    return out


def _delivery_order(d: Delivery) -> tuple[float, str]:
    first = d.sent_at if d.sent_at is not None else d.acked_at
    return (first if first is not None else 0.0, d.session)


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class RedisLease(Lease):
    def __init__(self, link: Link, keys: Keyspace) -> None:
        self._link = link
        self._key = keys.monitor_lease

    async def acquire(self, holder: str, ttl: float) -> bool:
        return bool(await self._link.run(LEASE, [self._key], [holder, _ms(ttl)]))

    async def release(self, holder: str) -> None:
        await self._link.run(RELEASE, [self._key], [holder])


class RedisRateLimits(RateLimits):
    """API keys' publish buckets, shared by every node (the :data:`RATE` script)."""

    def __init__(self, link: Link, keys: Keyspace) -> None:
        self._link = link
        self._keys = keys

    async def take(self, name: str, rate: float, burst: float) -> float:
        wait = await self._link.run(RATE, [self._keys.rate(name)], [repr(rate), repr(burst)])
        return float(wait)
