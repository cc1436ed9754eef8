"""The bus subscriber's own connection to Redis: a small asyncio protocol over hiredis.

Pub/sub needs a connection of its own (a subscribed connection takes no other commands), read by
one reader in order. :class:`Subscriber` is that connection, with the four calls the bus makes
(:class:`pushsvc.broker.redis.link.Connection`, as redis-py's asyncio connection has them):
``connect()``, ``send_command(*args)``, ``read_response(timeout)`` and ``disconnect()``.

``connect()`` opens the socket (TCP, TLS with the URL's options, or a unix socket) and logs in:
``AUTH`` with the URL's user and password, ``SELECT`` its db; RESP2 throughout. Replies are parsed
by hiredis as they arrive and queued until read; past :data:`HIGH_WATER` unread replies the socket
is no longer read, so a slow reader leaves the backlog in Redis' output buffer (whose limit ends
the subscription) instead of in the node's memory.

``read_response(timeout)`` waits up to ``timeout`` seconds (``None``: the connect timeout;
``math.inf``: no limit) and returns None when nothing came in that time; an error reply is
raised. A connection that is lost, or closed, raises a redis-py ``ConnectionError`` from every
call after it, as redis-py's connection does: the bus handles one kind of failure.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from typing import Any, cast

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pushsvc.broker.redis.mux import Arg, login, pack, reply_error
from pushsvc.broker.redis.url import Address, Target

#: Unread replies past which the socket is paused (resumed when half of them are read).
HIGH_WATER = 4096
_MORE = object()  # hiredis: no complete reply buffered yet


class _Protocol(asyncio.Protocol):
    """Parses what arrives into ``replies``; wakes the one reader."""

    def __init__(self) -> None:
        self.parser = hiredis.Reader(replyError=ResponseError, notEnoughData=_MORE)
        self.replies: deque[Any] = deque()
        self.transport: asyncio.Transport | None = None
        self.lost: Exception | None = None
        self.paused = False
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._arrived: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.parser.feed(data)
        while (reply := self.parser.gets()) is not _MORE:
            self.replies.append(reply)
        if self.replies:
            self._wake()
            if len(self.replies) >= HIGH_WATER and self.transport is not None:
                self.transport.pause_reading()
                self.paused = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = RedisConnectionError(f"connection to redis lost: {exc or 'closed'}")
        self.transport = None
        self._wake()
        if not self.closed.done():
            self.closed.set_result(None)

    def _wake(self) -> None:
        if self._arrived is not None and not self._arrived.done():
            self._arrived.set_result(None)

    async def next_reply(self) -> Any:
        """The oldest unread reply, once there is one. Raises when the connection is gone."""
        while not self.replies:
            if self.lost is not None:
                raise self.lost
            self._arrived = asyncio.get_running_loop().create_future()
            try:
                await self._arrived
            finally:
                self._arrived = None
        reply = self.replies.popleft()
        if self.paused and len(self.replies) <= HIGH_WATER // 2 and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return reply


class Subscriber:
    """One connection to ``address`` (or the URL's unix socket) for the bus: ``await connect()``
    first; the owner must ``await disconnect()`` it, also when ``connect()`` failed."""

    def __init__(self, target: Target, address: Address | None, timeout: float) -> None:
        self.target = target
        self.address = address
        self.timeout = timeout
        self._protocol: _Protocol | None = None

    @property
    def where(self) -> str:
        """host:port, or the socket path."""
        if self.address is None:
            return self.target.path or ""
        return f"{self.address[0]}:{self.address[1]}"

    async def connect(self) -> None:
        """Open the connection and log in (``AUTH``, ``SELECT``), within ``timeout`` seconds.
        Raises a redis-py ConnectionError or TimeoutError."""
        loop = asyncio.get_running_loop()
        target = self.target
        try:
            async with asyncio.timeout(self.timeout):
                if self.address is None:
                    assert target.path is not None
                    _, protocol = await loop.create_unix_connection(_Protocol, target.path)
                else:
                    host, port = self.address
                    context = target.tls.context() if target.tls is not None else None
                    _, protocol = await loop.create_connection(_Protocol, host, port, ssl=context)
                self._protocol = protocol
                await self._log_in()
        except TimeoutError as exc:
            await self.disconnect(nowait=True)
            raise RedisTimeoutError(f"could not connect to redis at {self.where} in time") from exc
        except OSError as exc:
            await self.disconnect(nowait=True)
            message = f"could not connect to redis at {self.where}: {exc}"
            raise RedisConnectionError(message) from exc

    async def _log_in(self) -> None:
        hello = login(self.target)
        if not hello:
            return
        self._write(b"".join(pack(c) for c in hello))
        for _ in hello:
            reply = await self._next()
            if isinstance(reply, ResponseError):
                raise RedisConnectionError(f"redis refused the connection: {reply}")

    async def send_command(self, *args: Arg, check_health: bool = True) -> None:
        """Write one command (``check_health`` is accepted for redis-py's signature; there is no
        health check). Raises a redis-py ConnectionError when the connection is gone."""
        self._write(pack(args))

    async def read_response(self, timeout: float | None = None) -> Any:  # noqa: ASYNC109 - redis-py API
        """The next reply, or None when none came within ``timeout`` seconds (``None``: the
        connect timeout; ``math.inf``: wait as long as it takes). An error reply is raised."""
        wait = self.timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(None if math.isinf(wait) else wait):
                reply = await self._next()
        except TimeoutError:
            return None
        if isinstance(reply, ResponseError):
            raise reply_error(reply)
        return reply

    async def disconnect(self, nowait: bool = False) -> None:
        """Close the connection (idempotent). ``nowait``: drop it at once; otherwise close it
        properly (TLS says goodbye) and wait, up to ``timeout``, until it is closed."""
        protocol, self._protocol = self._protocol, None
        if protocol is None or protocol.transport is None:
            return
        transport = protocol.transport
        if nowait:
            transport.abort()
            return
        transport.close()
        try:
            async with asyncio.timeout(self.timeout):
                await asyncio.shield(protocol.closed)
        except TimeoutError:
            transport.abort()
        except asyncio.CancelledError:  # do not leave it half closed
            transport.abort()
            raise

    def _write(self, data: bytes) -> None:
        protocol = self._protocol
        if protocol is None or protocol.transport is None or protocol.transport.is_closing():
            raise RedisConnectionError(f"connection to redis at {self.where} is closed")
        protocol.transport.write(data)

    async def _next(self) -> Any:
        protocol = self._protocol
        if protocol is None:
            raise RedisConnectionError(f"connection to redis at {self.where} is closed")
        return await protocol.next_reply()
