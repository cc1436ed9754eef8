"""The cluster broker: every part of :mod:`pushsvc.broker.base` kept in Redis.

Modules: ``url`` (the Redis URL forms, parsed once), ``sentinel`` (where the master is, and the
``ROLE`` check every connection makes), ``mux`` (the multiplexed command connection), ``link``
(the node's connections, error mapping, scripts by SHA), ``scripts`` (the Lua), ``history``,
``bus``, ``registry``, ``ledger`` (with idempotency keys and the monitor lease).
Key names and the keyspace are documented in :mod:`pushsvc.broker.keys`.

Publishing runs the publish script once per :data:`PUBLISH_CHUNK` messages, every run of a batch
in one round trip: each message is appended to its streams, announced on each stream's channel
(with the offset before it, for per-stream gap detection), given its trail and bound to its
idempotency key inside one atomic script run, so every node that follows a stream sees its
envelopes in offset order, a message accepted by a node that dies
right after still has its trail, and a key is bound exactly when its message was appended.
A run that fails leaves the messages before the failure appended (Redis does not roll a script
back): their outcome is reported unknown, and a retry with their keys finds them.

With ``min_replicas`` > 0 a publish is placed only once ``WAIT`` confirms that many
replicas have it; otherwise its outcome is :class:`pushsvc.errors.BrokerUnavailable` (it may be
appended already: the retry with its key finds it). Its envelopes are then published only after
``WAIT`` confirmed the writes, not inside the script: a master that lost its place in a failover
(frozen, back for a moment before it is made a replica) shows nodes nothing it cannot keep, so
no device is handed a message that is then lost, and no node's position in a stream moves past
entries it has not seen. A retry whose key is bound announces the first placement again.

Needs Redis 6.2 or newer. ``up`` is False while the bus is not subscribed or the last command
could not reach Redis; such operations raise :class:`pushsvc.errors.BrokerUnavailable` within
about ``timeout`` seconds.
"""

from __future__ import annotations

import contextlib
import logging

import msgspec

from pushsvc.broker.base import Broker, Outcome, Placed, Publication, Published
from pushsvc.broker.keys import DEFAULT_PREFIX, Keyspace, id_partition, partition_of
from pushsvc.broker.redis.bus import bus_for
from pushsvc.broker.redis.history import RedisHistory
from pushsvc.broker.redis.ledger import RedisLease, RedisLedger, RedisRateLimits
from pushsvc.broker.redis.link import Link
from pushsvc.broker.redis.mux import Arg
from pushsvc.broker.redis.partitions import Partitions, settled
from pushsvc.broker.redis.push import RedisEscalations, RedisWebhookQueue
from pushsvc.broker.redis.registry import RedisRegistry
from pushsvc.broker.redis.scripts import PUBLISH
from pushsvc.broker.redis.url import Target, parse
from pushsvc.errors import BrokerError
from pushsvc.types import Message

log = logging.getLogger(__name__)

PUBLISH_CHUNK = 128  # messages per script run: bounds how long one run holds the server

_encode = msgspec.json.Encoder().encode
_placed = msgspec.json.Decoder(Placed)


class RedisBroker(Broker):
    """The broker of a cluster node. Construct, :meth:`Bus.subscribe`, then ``await start()``.

    The monitor uses one without ``start()``: every part but the bus works without it.

    ``target``: the Redis URL, or its parsed :class:`Target` (TLS options included).
    ``prefix``: of every key and channel. ``min_replicas``: replicas ``WAIT`` must confirm before
    a publish is placed. ``history_size`` and ``history_ttl``: entries kept per stream and for how
    long, s. ``idempotency_ttl``: seconds an idempotency key is kept. ``node_ttl``: seconds a
    node's registry entry outlives its last heartbeat. ``push_retention``: seconds a push
    subscription outlives its device's last session. ``ledger_retention``: seconds a trail
    outlives its message. ``timeout``: socket connect and read timeout, seconds.
    :func:`pushsvc.brokers.redis_broker` maps a process's settings onto these.
    """

    def __init__(
        self,
        target: Target | str,
        *,
        prefix: str = DEFAULT_PREFIX,
        min_replicas: int = 0,
        history_size: int,
        history_ttl: int,
        idempotency_ttl: int,
        node_ttl: float,
        push_retention: int,
        ledger_retention: float = 3600,
        timeout: float = 1.0,
    ) -> None:
        if isinstance(target, str):
            target = parse(target)
        self.keys = keys = Keyspace(prefix, target.db, one_slot=target.mode == "cluster")
        self._parts = parts = Partitions(target, keys, timeout)
        control = parts.control
        self._publish = "SPUBLISH" if target.mode == "cluster" else "PUBLISH"
        self._replicas = min_replicas
        self._maxlen = history_size
        self._ttl = history_ttl
        self._keep_ms = idempotency_ttl * 1000
        self._retention_ms = int(ledger_retention * 1000)
        self.history = RedisHistory(parts, history_ttl, min_replicas)
        self.bus = self._bus = bus_for(parts)
        self.registry = RedisRegistry(control, keys, node_ttl)
        self.ledger = RedisLedger(parts, ledger_retention, early_ttl=history_ttl + ledger_retention)
        self.lease = RedisLease(control, keys)
        self.limits = RedisRateLimits(control, keys)
        self.escalations = RedisEscalations(parts, push_retention, ledger_retention)
        self.webhooks = RedisWebhookQueue(control, keys)
        self._started = False
        self._closed = False

    @property
    def partitions(self) -> Partitions:
        """The links that serve the keyspace's partitions."""
        return self._parts

    @property
    def up(self) -> bool:
        return self._started and not self._closed and self._bus.connected and self._parts.reachable

    async def start(self) -> None:
        """Connect and subscribe (waits up to ``2 * timeout`` for the subscription; when Redis
        is not there yet, returns with ``up`` False and keeps trying)."""
        if self._started or self._closed:
            return
        self._started = True
        await self._bus.start(wait=2 * self._parts.timeout)
        if self._parts.split:  # the subscriptions vouch for their partitions' links only
            with contextlib.suppress(BrokerError):
                await self._parts.control.call("PING")

    async def close(self) -> None:
        """Stop the bus reader and close every connection (idempotent)."""
        if self._closed:
            return
        self._closed = True
        await self._bus.close()
        await self._parts.aclose()

    async def publish(self, items: list[Publication], origin: str) -> list[Outcome]:
        # A message is one run when its streams, its trail and its idempotency key are in one
        # group (always, but on Redis Cluster). Otherwise (split) its key is bound first, in the
        # key's group with nothing appended, so that a retry learns the first id before it
        # places anything; then one run per group appends it under a placement key; then its
        # trail gets its Published record. Appends go in the order of the items, per group.
        out: list[Outcome] = [BrokerError("not placed")] * len(items)
        runs, binds, plans = self._plan(items, out)
        for part, outcome in zip(binds, await self._place(binds, origin), strict=True):
            out[part.item] = outcome
        for i, plan in plans.items():
            item, bound = items[i], out[i]
            if not isinstance(bound, Placed):
                continue
            if bound.duplicate and bound.fingerprint != item.fingerprint:
                continue  # another request's key: the publisher answers the conflict
            message = _as_placed(item.message, bound.id)
            for group, streams in plan.items():
                if all(s in bound.offsets for s in streams):
                    continue  # a duplicate whose first placement there is known
                key = None if item.key is None else self.keys.placed(message.id, group)
                runs.append(_Part(i, group, message, streams, key, item.fingerprint,
                                  trail=False, own=False))  # fmt: skip
        runs.sort(key=lambda part: part.item)
        for part, outcome in zip(runs, await self._place(runs, origin), strict=True):
            bound = out[part.item]
            if part.own:
                out[part.item] = outcome
            elif isinstance(bound, Placed):
                if isinstance(outcome, BrokerError):
                    out[part.item] = outcome
                else:
                    bound.offsets.update(outcome.offsets)
        for i in plans:
            placed = out[i]
            if isinstance(placed, Placed):  # in the order the streams were asked for
                found = placed.offsets
                placed.offsets = {s: found[s] for s in items[i].streams if s in found}
        await self._complete_trails(items, list(plans), out)
        return out

    def _plan(
        self, items: list[Publication], out: list[Outcome]
    ) -> tuple[list[_Part], list[_Part], dict[int, dict[int, list[str]]]]:
        """The runs of the messages placed in one run, the binding runs of the split ones, and
        the streams by group of each split one (by its index). An unkeyed split message needs
        no binding: its outcome starts placed, with no offsets."""
        parts, keys = self._parts, self.keys
        runs: list[_Part] = []
        binds: list[_Part] = []
        plans: dict[int, dict[int, list[str]]] = {}
        for i, item in enumerate(items):
            m = item.message
            scoped = None if item.key is None else keys.idempotency(item.key)
            if not parts.split:  # one server: every message is one run
                runs.append(_Part(i, 0, m, item.streams, scoped, item.fingerprint,
                                  trail=True, own=True))  # fmt: skip
                continue
            trail = parts.group(id_partition(m.id))
            anchor = trail if item.key is None else parts.group(partition_of(item.key))
            plan: dict[int, list[str]] = {}
            for stream in item.streams:
                plan.setdefault(parts.group(partition_of(stream)), []).append(stream)
            if set(plan) <= {anchor} and trail == anchor:
                runs.append(_Part(i, anchor, m, item.streams, scoped, item.fingerprint,
                                  trail=True, own=True))  # fmt: skip
                continue
            plans[i] = plan
            if scoped is not None:
                binds.append(_Part(i, anchor, m, [], scoped, item.fingerprint,
                                   trail=trail == anchor, own=True))  # fmt: skip
            else:
                out[i] = Placed(id=m.id, offsets={})
        return runs, binds, plans

    async def _place(self, parts: list[_Part], origin: str) -> list[Outcome]:
        """Run the publish script for ``parts``, one link's runs in one round trip (the links
        at once); the outcome of each part, in order. Raises when no link replied at all."""
        defer = self._replicas > 0  # announce only what WAIT confirmed
        announce: Arg = "" if defer else self._publish
        head: list[Arg] = [self._maxlen, self._ttl, announce, _encode(origin), self._keep_ms]
        by_group: dict[int, list[int]] = {}
        for n, part in enumerate(parts):
            by_group.setdefault(part.group, []).append(n)
        runs: list[tuple[int, list[list[int]], list[tuple[list[Arg], list[Arg]]]]] = []
        for group, indices in by_group.items():
            chunks = [indices[s : s + PUBLISH_CHUNK] for s in range(0, len(indices), PUBLISH_CHUNK)]
            calls = [self._call(head, [parts[n] for n in chunk]) for chunk in chunks]
            runs.append((group, chunks, calls))
        replies = await settled([
            self._parts.link(group).run_each(PUBLISH, calls, replicas=self._replicas)
            for group, _, calls in runs
        ])  # fmt: skip
        failed = [r for r in replies if isinstance(r, Exception)]
        if failed and len(failed) == len(replies):
            raise failed[0]  # no reply at all: nothing is known of any of them
        out: list[Outcome] = [BrokerError("not placed")] * len(parts)
        width = 3 if defer else 2
        for (group, chunks, _), group_replies in zip(runs, replies, strict=True):
            if isinstance(group_replies, Exception):
                if not isinstance(group_replies, BrokerError):
                    raise group_replies
                for n in (n for chunk in chunks for n in chunk):
                    out[n] = group_replies  # no reply at all: these may or may not be placed
                continue
            envelopes: list[tuple[Arg, ...]] = []
            for chunk, reply in zip(chunks, group_replies, strict=True):
                if isinstance(reply, BrokerError):
                    for n in chunk:
                        out[n] = reply
                    continue
                for n, at in zip(chunk, range(0, len(reply), width), strict=True):
                    placed = _placed.decode(reply[at + 1])
                    placed.duplicate = reply[at] == 1
                    out[n] = placed
                    if defer:
                        pairs = reply[at + 2]
                        envelopes += [
                            (self._publish, channel, text)
                            for channel, text in zip(pairs[::2], pairs[1::2], strict=True)
                        ]
            if envelopes:
                await self._announce(self._parts.link(group), envelopes)
        return out

    def _call(self, head: list[Arg], parts: list[_Part]) -> tuple[list[Arg], list[Arg]]:
        """The keys and values of one publish script run for ``parts`` (see ``scripts.PUBLISH``)."""
        keys: list[Arg] = []
        args = list(head)
        for part in parts:
            message, streams = part.message, part.streams
            flags = ""
            if part.trail:
                keys.append(self.keys.trail(message.id))
                flags += "t"
            if part.key is not None:
                keys.append(part.key)
                flags += "k"
            keys += [self.keys.stream(s) for s in streams]
            body_at: Arg = ""
            if len(streams) > 1:  # stored once, the entries refer to it
                keys.append(self._parts.body(message.id, streams[0]))
                body_at = message.ts + self._ttl * 1000
            expire_at = message.expires + self._retention_ms
            args += (len(streams), _encode(message), published_head(message), expire_at)
            args += (message.id, part.fingerprint, flags, body_at)
            args += [_encode(s) for s in streams]
            args += [self.keys.stream_channel(s) for s in streams]
        return keys, args

    async def _complete_trails(
        self, items: list[Publication], split: list[int], out: list[Outcome]
    ) -> None:
        """Write the Published record of each message placed in several groups, and the
        placement its idempotency key is bound to, with all its offsets (its binding run wrote
        them with none)."""
        done: dict[int, list[tuple[Arg, ...]]] = {}
        for i in split:
            item, placed = items[i], out[i]
            if not isinstance(placed, Placed) or placed.fingerprint != item.fingerprint:
                continue  # not placed, or another request's key
            message = _as_placed(item.message, placed.id)
            record = published_head(message) + _encode(placed.offsets) + b"}"
            trail = self.keys.trail(message.id)
            expire_at = message.expires + self._retention_ms
            group = self._parts.group(id_partition(message.id))
            done.setdefault(group, []).extend(
                [("HSET", trail, "p", record), ("PEXPIREAT", trail, expire_at)]
            )
            if item.key is not None:
                bound = _encode({"id": placed.id, "offsets": placed.offsets,
                                 "fingerprint": item.fingerprint})  # fmt: skip
                group = self._parts.group(partition_of(item.key))
                done.setdefault(group, []).append(
                    ("SET", self.keys.idempotency(item.key), bound, "XX", "KEEPTTL")
                )
        results = await settled([self._parts.link(g).pipeline(c) for g, c in done.items()])
        for result in results:
            if isinstance(result, BrokerError):  # placed all the same; the trail lacks offsets
                log.warning("completing a trail failed", extra={"error": str(result)})
            elif isinstance(result, Exception):
                raise result

    async def _announce(self, link: Link, envelopes: list[tuple[Arg, ...]]) -> None:
        """Publish the envelopes of writes ``WAIT`` confirmed (tried twice). Those messages are
        placed whatever happens here: a node that missed an envelope finds the gap with the next
        one of its stream, or catches up when its subscription is made again, and a device
        that reconnects gets it from history."""
        for attempt in (1, 2):
            try:
                await link.pipeline(envelopes)
            except BrokerError as exc:
                if attempt == 2:
                    log.warning(
                        "announcing confirmed messages failed",
                        extra={"error": str(exc), "envelopes": len(envelopes)},
                    )
            else:
                return


class _Part(msgspec.Struct, frozen=True):
    """What one publish script run places of the publication ``item``: ``message`` appended to
    ``streams`` of ``group``, bound to ``key`` (its idempotency key, or a placement key away
    from its home; None: unkeyed), with its trail when ``trail``. ``own``: the run's outcome is
    the publication's (else its offsets are added to it)."""

    item: int
    group: int
    message: Message
    streams: list[str]
    key: str | None
    fingerprint: str
    trail: bool
    own: bool


def _as_placed(message: Message, message_id: str) -> Message:
    """``message`` as the first publication with its key placed it: under ``message_id``, whose
    first 12 hex digits are its publish time (ms); its lifetime unchanged."""
    if message_id == message.id:
        return message
    try:
        ts = int(message_id[:12], 16)
    except ValueError:  # not an id pushsvc made: its time is not in it
        ts = message.ts
    return msgspec.structs.replace(
        message, id=message_id, ts=ts, expires=ts + message.expires - message.ts
    )


def published_head(message: Message) -> bytes:
    """The Published record of ``message`` as JSON, cut before the value of its last field,
    ``streams``: the publish script appends the offsets and the closing brace."""
    m = message
    record = _encode(Published(m.id, m.event, m.ts / 1000, m.expires / 1000, m.ack, {}))
    return record[: -len(b"{}}")]


__all__ = ["RedisBroker"]
