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

import logging

import msgspec

from pushsvc.broker.base import Broker, Outcome, Placed, Publication, Published
from pushsvc.broker.keys import DEFAULT_PREFIX, Keyspace
from pushsvc.broker.redis.bus import RedisBus
from pushsvc.broker.redis.history import RedisHistory
from pushsvc.broker.redis.ledger import RedisLease, RedisLedger, RedisRateLimits
from pushsvc.broker.redis.link import Link
from pushsvc.broker.redis.mux import Arg
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
        self._link = link = Link(target, timeout, slot_key=keys.nodes)
        self._publish = "SPUBLISH" if target.mode == "cluster" else "PUBLISH"
        self._replicas = min_replicas
        self._maxlen = history_size
        self._ttl = history_ttl
        self._keep_ms = idempotency_ttl * 1000
        self._retention_ms = int(ledger_retention * 1000)
        self.history = RedisHistory(link, keys, history_ttl)
        self.bus = self._bus = RedisBus(link, keys, sharded=target.mode == "cluster")
        self.registry = RedisRegistry(link, keys, node_ttl)
        self.ledger = RedisLedger(
            link, keys, ledger_retention, early_ttl=history_ttl + ledger_retention
        )
        self.lease = RedisLease(link, keys)
        self.limits = RedisRateLimits(link, keys)
        self.escalations = RedisEscalations(link, keys, push_retention, ledger_retention)
        self.webhooks = RedisWebhookQueue(link, keys)
        self._started = False
        self._closed = False

    @property
    def up(self) -> bool:
        return self._started and not self._closed and self._bus.connected and self._link.reachable

    async def start(self) -> None:
        """Connect and subscribe (waits up to ``2 * timeout`` for the subscription; when Redis
        is not there yet, returns with ``up`` False and keeps trying)."""
        if self._started or self._closed:
            return
        self._started = True
        await self._bus.start(wait=2 * self._link.timeout)

    async def close(self) -> None:
        """Stop the bus reader and close every connection (idempotent)."""
        if self._closed:
            return
        self._closed = True
        await self._bus.close()
        await self._link.aclose()

    async def publish(self, items: list[Publication], origin: str) -> list[Outcome]:
        defer = self._replicas > 0  # announce only what WAIT confirmed
        announce: Arg = "" if defer else self._publish
        head: list[Arg] = [self._maxlen, self._ttl, announce, _encode(origin), self._keep_ms]
        calls: list[tuple[list[Arg], list[Arg]]] = []
        for start in range(0, len(items), PUBLISH_CHUNK):
            keys: list[Arg] = []
            args = list(head)
            for item in items[start : start + PUBLISH_CHUNK]:
                message, streams = item.message, item.streams
                keys.append(self.keys.trail(message.id))
                if item.key is not None:
                    keys.append(self.keys.idempotency(item.key))
                keys += [self.keys.stream(s) for s in streams]
                body_at: Arg = ""
                if len(streams) > 1:  # stored once, the entries refer to it
                    keys.append(self.keys.body(message.id))
                    body_at = message.ts + self._ttl * 1000
                expire_at = message.expires + self._retention_ms
                keyed = 1 if item.key is not None else 0
                args += (len(streams), _encode(message), published_head(message), expire_at)
                args += (message.id, item.fingerprint, keyed, body_at)
                args += [_encode(s) for s in streams]
                args += [self.keys.stream_channel(s) for s in streams]
            calls.append((keys, args))
        replies = await self._link.run_each(PUBLISH, calls, replicas=self._replicas)
        out: list[Outcome] = []
        envelopes: list[tuple[Arg, ...]] = []
        width = 3 if defer else 2
        for start, reply in zip(range(0, len(items), PUBLISH_CHUNK), replies, strict=True):
            chunk = len(items[start : start + PUBLISH_CHUNK])
            if isinstance(reply, BrokerError):
                out += [reply] * chunk
                continue
            for i in range(0, len(reply), width):
                placed = _placed.decode(reply[i + 1])
                placed.duplicate = reply[i] == 1
                out.append(placed)
                if defer:
                    pairs = reply[i + 2]
                    envelopes += [
                        (self._publish, channel, text)
                        for channel, text in zip(pairs[::2], pairs[1::2], strict=True)
                    ]
        if envelopes:
            await self._announce(envelopes)
        return out

    async def _announce(self, envelopes: list[tuple[Arg, ...]]) -> None:
        """Publish the envelopes of writes ``WAIT`` confirmed (tried twice). Those messages are
        placed whatever happens here: a node that missed an envelope finds the gap with the next
        one of its stream, or catches up when its subscription is made again, and a device
        that reconnects gets it from history."""
        for attempt in (1, 2):
            try:
                await self._link.pipeline(envelopes)
            except BrokerError as exc:
                if attempt == 2:
                    log.warning(
                        "announcing confirmed messages failed",
                        extra={"error": str(exc), "envelopes": len(envelopes)},
                    )
            else:
                return


def published_head(message: Message) -> bytes:
    """The Published record of ``message`` as JSON, cut before the value of its last field,
    ``streams``: the publish script appends the offsets and the closing brace."""
    m = message
    record = _encode(Published(m.id, m.event, m.ts / 1000, m.expires / 1000, m.ack, {}))
    return record[: -len(b"{}}")]


__all__ = ["RedisBroker"]
