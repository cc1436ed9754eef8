"""The bus over Redis pub/sub: routed delivery on one dedicated connection, one reader task,
callbacks in the order Redis sent them.

Each stream has a channel (:meth:`pushsvc.broker.keys.Keyspace.stream_channel`); the publish
script puts each message's envelope on the channel of every stream it was appended to. A node
*follows* the streams its sessions read: the reader subscribes to their channels (``SSUBSCRIBE``
on Redis Cluster, where the channels are sharded with the keyspace's slot; ``SUBSCRIBE``
elsewhere), plus the command channel and its own probe channel, so a node receives only the
messages it has readers for. :meth:`RedisBus.follow` returns once Redis confirmed the
subscription: a session reads history after that, so nothing falls between history and live.
Follows and unfollows made during one turn of the event loop go out as one command.

Losing the subscription — Redis restarted, a failover, ``CLIENT KILL TYPE pubsub``, the output
buffer limit, a slot that moved away on Cluster (Redis then cancels its sharded subscriptions),
a connection that went silent — is detected, the bus reports itself down, and the reader
reconnects (to wherever the master is now) with capped exponential backoff and full jitter
(:data:`BACKOFF_BASE` to :data:`BACKOFF_CAP`), subscribes to every followed stream again and
waits for every confirmation. Then it calls ``on_resync()`` before passing on any envelope that
arrived on the new connection: whatever was published meanwhile is only in history now.

On Redis Cluster a sharded channel is served by the master of its slot only, so the bus there is
a :class:`PartitionedBus`: one such subscription per partition of the keyspace, each at the
master of its partition, following the streams of its partition.

Two probes keep the subscription honest. A watchdog sends PING after ``ping_interval`` seconds
without a message and closes a connection that then stays mute for ``ping_timeout`` seconds. And
every ``ping_interval`` the bus publishes to its own probe channel through the command
connection: when Redis answers that nobody heard it twice in a row, the subscription is on a
server that no longer gets the publishes (a demoted master that still answers PING), and it is
dropped and made again. With Sentinel, each probe first asks the sentinels where the master is
(:meth:`Link.follow_master`), and either connection found on another server is dropped and made
again there: a master that lost its place without knowing it (failed over while it kept
running, cut off from the sentinels, or a failover's old master started again) still says master
to ``ROLE`` until Sentinel makes it a replica, and when both connections are on it the probe is
heard.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
from collections.abc import Callable, Iterable
from typing import Any

import msgspec
from redis.exceptions import RedisError

from pushsvc.broker.base import Bus, Command
from pushsvc.broker.keys import Keyspace, partition_of
from pushsvc.broker.redis.link import Connection, Link
from pushsvc.broker.redis.partitions import Partitions
from pushsvc.core.backoff import backoff_delay
from pushsvc.errors import BrokerError, BrokerUnavailable
from pushsvc.types import Envelope

log = logging.getLogger(__name__)

BACKOFF_BASE = 0.05
BACKOFF_CAP = 2.0
CHUNK = 1000  # channels per SUBSCRIBE / UNSUBSCRIBE command
PROBE_STRIKES = 2  # probes nobody heard before the subscription is made again
WANTED = 1  # a channel's state: its stream is followed
CONFIRMED = 2  # subscribed on the current connection


class SubscriptionLost(Exception):
    """The subscription went silent or answered something unexpected (internal to the reader)."""


class RedisBus(Bus):
    """Call :meth:`subscribe`, then ``await start()``; ``await close()`` at the end.
    ``sharded``: Redis Cluster's sharded pub/sub for the stream and probe channels.
    ``partition``: where the probe channel is (on Cluster, the partition this bus serves).
    ``commands``: whether it also listens to the command channel."""

    def __init__(
        self,
        link: Link,
        keys: Keyspace,
        *,
        sharded: bool = False,
        partition: int = 0,
        commands: bool = True,
        ping_interval: float = 1.0,
        ping_timeout: float = 2.0,
    ) -> None:
        self._link = link
        self._keys = keys
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        if sharded:
            self._sub, self._unsub, self._publish = "SSUBSCRIBE", "SUNSUBSCRIBE", "SPUBLISH"
        else:
            self._sub, self._unsub, self._publish = "SUBSCRIBE", "UNSUBSCRIBE", "PUBLISH"
        self._command_channel = keys.commands.encode() if commands else None
        self._probe_channel = keys.probe(secrets.token_hex(8), partition).encode()
        self._envelopes = msgspec.json.Decoder(Envelope)
        self._commands = msgspec.json.Decoder(Command)
        self._encoder = msgspec.json.Encoder()
        self._on_envelope: Callable[[Envelope], None] | None = None
        self._on_command: Callable[[Command], None] | None = None
        self._on_resync: Callable[[], None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._lost = False  # a subscription existed (or was due) and went away
        self._heard = False  # the subscription received something since the watchdog looked
        self.subscriptions = 0  # how many times the reader subscribed
        # Routed delivery. Channels are bytes, as Redis names them in its replies.
        # channel -> WANTED | CONFIRMED bits (one entry, one bytes object per channel: a node
        # may follow tens of thousands of streams)
        self._state: dict[bytes, int] = {}
        self._connection: Connection | None = None  # the subscription, once established
        self._asked: set[bytes] = set()  # SUBSCRIBE sent on it, not confirmed yet
        self._leaving: dict[bytes, int] = {}  # UNSUBSCRIBEs sent on it, not confirmed yet
        self._to_subscribe: set[bytes] = set()  # for the next flush
        self._to_unsubscribe: set[bytes] = set()
        self._waiters: dict[bytes, list[asyncio.Future[None]]] = {}
        self._flush_due = False
        self._flushes: set[asyncio.Task[None]] = set()

    @property
    def connected(self) -> bool:
        """True while the subscription is established."""
        return self._subscribed.is_set()

    def subscribe(
        self,
        on_envelope: Callable[[Envelope], None],
        on_command: Callable[[Command], None],
        on_resync: Callable[[], None] | None = None,
    ) -> None:
        self._on_envelope = on_envelope
        self._on_command = on_command
        self._on_resync = on_resync

    async def send_command(self, command: Command) -> None:
        await self._link.call("PUBLISH", self._keys.commands, self._encoder.encode(command))

    # -- following streams ----------------------------------------------------------------------

    def _channel(self, stream: str) -> bytes:
        return self._keys.stream_channel(stream).encode()

    async def follow(self, streams: Iterable[str]) -> None:
        waits: list[asyncio.Future[None]] = []
        loop = asyncio.get_running_loop()
        for stream in streams:
            channel = self._channel(stream)
            state = self._state.get(channel, 0)
            self._state[channel] = state | WANTED
            self._to_unsubscribe.discard(channel)
            leaving = channel in self._leaving
            if state & CONFIRMED and not leaving:
                continue
            if leaving or channel not in self._asked:
                self._to_subscribe.add(channel)
            waiter = loop.create_future()
            self._waiters.setdefault(channel, []).append(waiter)
            waits.append(waiter)
        if not waits:
            return
        self._schedule_flush()
        try:
            async with asyncio.timeout(self._link.timeout + self._ping_timeout):
                for waiter in waits:
                    await asyncio.shield(waiter)
        except TimeoutError:
            raise BrokerUnavailable("redis did not confirm the subscription in time") from None

    def unfollow(self, streams: Iterable[str]) -> None:
        for stream in streams:
            channel = self._channel(stream)
            state = self._state.get(channel, 0)
            if not state & WANTED:
                continue
            if state & CONFIRMED:
                self._state[channel] = CONFIRMED
            else:
                del self._state[channel]
            self._to_subscribe.discard(channel)
            if state & CONFIRMED or channel in self._asked:
                self._to_unsubscribe.add(channel)
            else:  # never asked for: whoever waits for it has nothing to wait for
                for waiter in self._waiters.pop(channel, ()):
                    if not waiter.done():
                        waiter.set_result(None)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_due and self._connection is not None:
            self._flush_due = True
            task = asyncio.get_running_loop().create_task(self._flush(self._connection))
            self._flushes.add(task)  # the loop keeps only a weak reference to a task
            task.add_done_callback(self._flushes.discard)

    async def _flush(self, connection: Connection) -> None:
        """Send the (un)subscriptions asked since the last flush, in chunks of :data:`CHUNK`."""
        self._flush_due = False
        if connection is not self._connection:
            return  # lost meanwhile: the next connection subscribes to what is wanted then
        unsubscribe, self._to_unsubscribe = list(self._to_unsubscribe), set()
        asked, self._to_subscribe = self._to_subscribe, set()
        subscribe = [
            c
            for c in asked
            if c in self._leaving
            or (not self._state.get(c, 0) & CONFIRMED and c not in self._asked)
        ]  # (a new connection subscribed to what was wanted when it was made)
        try:
            for start in range(0, len(unsubscribe), CHUNK):
                chunk = unsubscribe[start : start + CHUNK]
                for channel in chunk:
                    self._leaving[channel] = self._leaving.get(channel, 0) + 1
                await connection.send_command(self._unsub, *chunk, check_health=False)
            for start in range(0, len(subscribe), CHUNK):
                chunk = subscribe[start : start + CHUNK]
                self._asked.update(chunk)
                await connection.send_command(self._sub, *chunk, check_health=False)
        except (RedisError, OSError, AttributeError):
            pass  # the reader fails on its own, and the next connection subscribes again

    def _confirm(self, channel: bytes) -> None:
        self._asked.discard(channel)
        self._state[channel] = self._state.get(channel, 0) | CONFIRMED
        for waiter in self._waiters.pop(channel, ()):
            if not waiter.done():
                waiter.set_result(None)

    def _cancelled(self, channel: bytes) -> None:
        """An unsubscribe reply: ours, or Redis cancelling a subscription on its own."""
        state = self._state.pop(channel, 0) & ~CONFIRMED
        if state:
            self._state[channel] = state
        left = self._leaving.get(channel)
        if left is not None:
            if left > 1:
                self._leaving[channel] = left - 1
            else:
                del self._leaving[channel]
            return
        if state & WANTED or channel in (self._command_channel, self._probe_channel):
            raise SubscriptionLost(f"the server cancelled the subscription to {channel!r}")

    # -- the reader -----------------------------------------------------------------------------

    async def start(self, wait: float) -> None:
        """Start the reader; wait up to ``wait`` seconds for the first subscription.

        Returns either way: when Redis cannot be reached yet, the reader keeps trying and the
        first subscription it makes counts as a resync.
        """
        if self._task is not None:
            return
        self._task = asyncio.get_running_loop().create_task(self._run(), name="redis-bus")
        try:
            await asyncio.wait_for(self._subscribed.wait(), wait)
        except TimeoutError:
            self._lost = True
            log.warning("bus not subscribed yet, will keep trying")

    async def close(self) -> None:
        """Stop the reader and close its connection (idempotent)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._subscribed.clear()
        for waiters in self._waiters.values():
            for waiter in waiters:
                waiter.cancel()
        self._waiters.clear()

    async def _run(self) -> None:
        attempt = 0
        while True:
            connection: Connection | None = None
            try:
                connection = await self._link.subscriber()
                await self._listen(connection)
            except (RedisError, OSError, SubscriptionLost) as exc:
                if self._subscribed.is_set():
                    log.warning("bus subscription lost", extra={"error": str(exc)})
                    attempt = 0
                else:
                    log.debug("bus subscribe failed", extra={"error": str(exc)})
            finally:
                self._subscribed.clear()
                self._connection = None
                self._state = {c: WANTED for c, state in self._state.items() if state & WANTED}
                self._asked.clear()
                self._leaving.clear()
                self._to_subscribe.clear()
                self._to_unsubscribe.clear()
                if connection is not None:
                    await connection.disconnect(nowait=True)
            self._lost = True
            await asyncio.sleep(backoff_delay(attempt, BACKOFF_BASE, BACKOFF_CAP))
            attempt += 1

    async def _listen(self, connection: Connection) -> None:
        """Subscribe on ``connection`` to the commands, the probe and every followed stream,
        then dispatch until it fails (it always ends by raising)."""
        if self._command_channel is not None:
            await connection.send_command("SUBSCRIBE", self._command_channel, check_health=False)
        await connection.send_command(self._sub, self._probe_channel, check_health=False)
        streams = list(self._state)  # (all wanted: nothing is confirmed on a new connection)
        for start in range(0, len(streams), CHUNK):
            await connection.send_command(
                self._sub, *streams[start : start + CHUNK], check_health=False
            )
        self._asked.update(streams)
        pending = {self._probe_channel, *streams}
        if self._command_channel is not None:
            pending.add(self._command_channel)
        early: list[Any] = []  # messages that came before every confirmation
        while pending:
            reply = await connection.read_response(timeout=self._ping_timeout)
            if reply is None:
                raise SubscriptionLost("no subscribe confirmation in time")
            kind = reply[0]
            if kind in (b"subscribe", b"ssubscribe"):
                pending.discard(reply[1])
                self._confirm(reply[1])
            elif kind in (b"unsubscribe", b"sunsubscribe"):
                self._cancelled(reply[1])
            elif kind in (b"message", b"smessage"):
                early.append(reply)
            else:
                raise SubscriptionLost(f"unexpected reply while subscribing: {kind!r}")
        self._connection = connection
        self._subscribed.set()
        self._link.reachable = True
        self.subscriptions += 1
        if self._lost:
            self._lost = False
            log.info("bus subscription re-established", extra={"streams": len(streams)})
            if self._on_resync is not None:
                self._call(self._on_resync)
        for reply in early:
            self._dispatch(reply)
        self._schedule_flush()  # what was followed or unfollowed while subscribing
        self._heard = True
        watchdog = asyncio.get_running_loop().create_task(self._watch(connection))
        try:
            while True:  # no timer per read: the watchdog ends a silent connection
                reply = await connection.read_response(timeout=math.inf)
                self._heard = True
                self._dispatch(reply)
        finally:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog

    async def _watch(self, connection: Connection) -> None:
        """Every ``ping_interval``: publish to the probe channel through the command connection
        and drop the subscription when nobody heard it :data:`PROBE_STRIKES` times in a row;
        PING when nothing arrived, and disconnect (so that the reader fails) when nothing at all
        arrives within ``ping_timeout`` after that."""
        strikes = 0
        probe: asyncio.Task[int | None] | None = None
        loop = asyncio.get_running_loop()
        try:
            while True:
                self._heard = False
                if probe is None or probe.done():  # one probe in flight at most, never waited for
                    if probe is not None:
                        strikes = strikes + 1 if probe.result() == 0 else 0
                    probe = loop.create_task(self._probe(connection))
                await asyncio.sleep(self._ping_interval)
                if strikes >= PROBE_STRIKES:
                    log.warning("bus subscription no longer hears the master, subscribing again")
                    await connection.disconnect(nowait=True)
                    return
                if self._heard:
                    continue
                try:
                    await connection.send_command("PING", check_health=False)
                except (RedisError, OSError, AttributeError):
                    # The connection is gone: the reader fails on its own. (redis-py raises
                    # AttributeError when the reader's failure closed it in the middle of this
                    # write.)
                    return
                await asyncio.sleep(self._ping_timeout)
                if not self._heard:
                    log.warning("bus subscription silent", extra={"timeout": self._ping_timeout})
                    await connection.disconnect(nowait=True)
                    return
        finally:
            if probe is not None:
                probe.cancel()  # a command in flight must not outlive the bus

    async def _probe(self, connection: Connection) -> int | None:
        """Publish to the probe channel: how many subscriptions heard it (None: no answer).

        With Sentinel, first ask where the master is: a command connection elsewhere is dropped
        (:meth:`Link.follow_master`) and the publish goes to the master; a subscription
        elsewhere is dropped and made again (None)."""
        master = await self._link.follow_master()
        if master is not None and master != connection.where:
            log.warning(
                "bus subscription is not on the master, subscribing again",
                extra={"subscribed": connection.where, "master": master},
            )
            await connection.disconnect(nowait=True)
            return None
        try:
            return int(await self._link.call(self._publish, self._probe_channel, b""))
        except BrokerError:
            return None  # the command connection has its own trouble

    def _dispatch(self, reply: Any) -> None:
        """One pub/sub reply: ``[b"message", channel, data]`` (``smessage`` when sharded), a
        (un)subscribe confirmation, or ``[b"pong", b""]``. An unsubscribe the server sent on its
        own ends the subscription (it is made again)."""
        kind = reply[0]
        if kind not in (b"message", b"smessage"):
            if kind in (b"subscribe", b"ssubscribe"):
                self._confirm(reply[1])
            elif kind in (b"unsubscribe", b"sunsubscribe"):
                self._cancelled(reply[1])
            return
        channel, data = reply[1], reply[2]
        if channel == self._command_channel:
            try:
                command = self._commands.decode(data)
            except msgspec.DecodeError as exc:
                log.warning("undecodable command dropped", extra={"error": str(exc)})
                return
            if self._on_command is not None:
                self._call(self._on_command, command)
        elif channel != self._probe_channel:  # a stream's
            try:
                envelope = self._envelopes.decode(data)
            except msgspec.DecodeError as exc:
                log.warning("undecodable envelope dropped", extra={"error": str(exc)})
                return
            if self._on_envelope is not None:
                self._call(self._on_envelope, envelope)

    @staticmethod
    def _call(callback: Callable[..., None], *args: Any) -> None:
        """Run a subscriber callback; its failure is logged, never the bus's end."""
        try:
            callback(*args)
        except Exception:
            log.exception("bus callback failed")


class PartitionedBus(Bus):
    """The bus on Redis Cluster: one :class:`RedisBus` per partition, each with its own
    subscription at the master of its partition's slot (sharded channels are served by the
    master of their slot only), following the streams of its partition; the first one also
    listens to the command channel. It is connected while every one of them is."""

    def __init__(self, parts: Partitions) -> None:
        self._buses = [
            RedisBus(link, parts.keys, sharded=True, partition=k, commands=k == 0)
            for k, link in enumerate(parts.links)
        ]

    @property
    def connected(self) -> bool:
        return all(bus.connected for bus in self._buses)

    @property
    def subscriptions(self) -> int:
        """How many times the readers subscribed, in all."""
        return sum(bus.subscriptions for bus in self._buses)

    def subscribe(
        self,
        on_envelope: Callable[[Envelope], None],
        on_command: Callable[[Command], None],
        on_resync: Callable[[], None] | None = None,
    ) -> None:
        for bus in self._buses:
            bus.subscribe(on_envelope, on_command, on_resync)

    async def send_command(self, command: Command) -> None:
        await self._buses[0].send_command(command)

    async def follow(self, streams: Iterable[str]) -> None:
        await asyncio.gather(*(
            self._buses[k].follow(group) for k, group in self._split(streams).items()
        ))  # fmt: skip

    def unfollow(self, streams: Iterable[str]) -> None:
        for k, group in self._split(streams).items():
            self._buses[k].unfollow(group)

    @staticmethod
    def _split(streams: Iterable[str]) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for stream in streams:
            out.setdefault(partition_of(stream), []).append(stream)
        return out

    async def start(self, wait: float) -> None:
        await asyncio.gather(*(bus.start(wait) for bus in self._buses))

    async def close(self) -> None:
        await asyncio.gather(*(bus.close() for bus in self._buses))


def bus_for(parts: Partitions) -> RedisBus | PartitionedBus:
    """The bus of a broker whose links are ``parts``: one subscription on a standalone or
    Sentinel-managed Redis, one per partition on Redis Cluster."""
    if parts.split:
        return PartitionedBus(parts)
    return RedisBus(parts.control, parts.keys)
