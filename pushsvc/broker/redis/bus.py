"""The bus over Redis pub/sub: one dedicated connection, one reader task, callbacks in bus order.

The reader subscribes to the envelope channel and the command channel on a connection of its own
and calls ``on_envelope`` / ``on_command`` for each message, in the order Redis sent them (the
publish script puts a stream's envelopes on the channel in offset order).

Losing the subscription — Redis restarted, ``CLIENT KILL TYPE pubsub``, the output buffer limit, a
connection that went silent — is detected, the bus reports itself down, and the reader reconnects
with capped exponential backoff and full jitter (:data:`BACKOFF_BASE` to :data:`BACKOFF_CAP`).
Once subscribed again it calls ``on_resync()`` before any new envelope: whatever was published
meanwhile is only in history now.

A silent connection is found by a watchdog: after ``ping_interval`` seconds without a message it
sends PING, and a connection that then stays mute for ``ping_timeout`` seconds is closed, which
ends the reader's wait; the reader itself reads without a timer per message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable
from typing import Any

import msgspec
from redis.exceptions import RedisError

from pushsvc.broker.base import Bus, Command
from pushsvc.broker.keys import Keyspace
from pushsvc.broker.redis.link import Connection, Link
from pushsvc.core.backoff import backoff_delay
from pushsvc.types import Envelope

log = logging.getLogger(__name__)

BACKOFF_BASE = 0.05
BACKOFF_CAP = 2.0


class SubscriptionLost(Exception):
    """The subscription went silent or answered something unexpected (internal to the reader)."""


class RedisBus(Bus):
    """Call :meth:`subscribe`, then ``await start()``; ``await close()`` at the end."""

    def __init__(
        self,
        link: Link,
        keys: Keyspace,
        *,
        ping_interval: float = 1.0,
        ping_timeout: float = 2.0,
    ) -> None:
        self._link = link
        self._keys = keys
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._bus_channel = keys.bus.encode()
        self._command_channel = keys.commands.encode()
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

    async def position(self) -> int:
        value = await self._link.call("GET", self._keys.bus_seq)
        return int(value) if value else 0

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
                if connection is not None:
                    await connection.disconnect(nowait=True)
            self._lost = True
            await asyncio.sleep(backoff_delay(attempt, BACKOFF_BASE, BACKOFF_CAP))
            attempt += 1

    async def _listen(self, connection: Connection) -> None:
        """Subscribe on ``connection`` and dispatch until it fails (it always ends by raising)."""
        await connection.send_command(
            "SUBSCRIBE", self._keys.bus, self._keys.commands, check_health=False
        )
        pending = {self._bus_channel, self._command_channel}
        while pending:
            reply = await connection.read_response(timeout=self._ping_timeout)
            if reply is None:
                raise SubscriptionLost("no subscribe confirmation in time")
            if reply[0] != b"subscribe":
                raise SubscriptionLost(f"unexpected reply while subscribing: {reply[0]!r}")
            pending.discard(reply[1])
        self._subscribed.set()
        self._link.reachable = True
        self.subscriptions += 1
        if self._lost:
            self._lost = False
            log.info("bus subscription re-established")
            if self._on_resync is not None:
                self._call(self._on_resync)
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
        """PING after ``ping_interval`` without a reply; disconnect (so that the reader fails)
        when nothing at all arrives within ``ping_timeout`` after that."""
        while True:
            self._heard = False
            await asyncio.sleep(self._ping_interval)
            if self._heard:
                continue
            try:
                await connection.send_command("PING", check_health=False)
            except (RedisError, OSError, AttributeError):
                # The connection is gone: the reader fails on its own. (redis-py raises
                # AttributeError when the reader's failure closed it in the middle of this write.)
                return
            await asyncio.sleep(self._ping_timeout)
            if not self._heard:
                log.warning("bus subscription silent", extra={"timeout": self._ping_timeout})
                await connection.disconnect(nowait=True)
                return

    def _dispatch(self, reply: Any) -> None:
        """One pub/sub reply: ``[b"message", channel, data]`` or ``[b"pong", b""]``. An
        ``unsubscribe`` the server sent on its own ends the subscription (it is made again)."""
        if reply[0] != b"message":
            if reply[0] in (b"unsubscribe", b"sunsubscribe"):
                raise SubscriptionLost(f"the server cancelled the subscription to {reply[1]!r}")
            return
        channel, data = reply[1], reply[2]
        if channel == self._bus_channel:
            try:
                envelope = self._envelopes.decode(data)
            except msgspec.DecodeError as exc:
                log.warning("undecodable envelope dropped", extra={"error": str(exc)})
                return
            if self._on_envelope is not None:
                self._call(self._on_envelope, envelope)
        elif channel == self._command_channel:
            try:
                command = self._commands.decode(data)
            except msgspec.DecodeError as exc:
                log.warning("undecodable command dropped", extra={"error": str(exc)})
                return
            if self._on_command is not None:
                self._call(self._on_command, command)

    @staticmethod
    def _call(callback: Callable[..., None], *args: Any) -> None:
        """Run a subscriber callback; its failure is logged, never the bus's end."""
        try:
            callback(*args)
        except Exception:
            log.exception("bus callback failed")
