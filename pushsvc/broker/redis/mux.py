"""One multiplexed command connection to Redis, as Lettuce and ioredis keep.

Redis answers the commands of a connection in the order they came, so any number of callers can
share one connection: each writes its commands and waits for as many replies, taken in order from
the stream. Everything written during one turn of the event loop goes out in one ``write`` (the
callers of a busy node pipeline together without asking for it), and replies are parsed by
hiredis straight from ``data_received``: no pool checkout, no lock, no stream reader per command.

Failure: when the connection is lost, or the oldest waiting caller has waited ``timeout`` seconds
while no reply at all came for as long, every waiting caller gets the error and the next call
connects again.
Nothing is re-sent: a caller whose reply was lost learns it, as with any one connection.
A ``READONLY`` reply (the server was demoted by a failover), or on Redis Cluster a ``MOVED`` or
``ASK`` (the slot is served elsewhere now), drops the connection the same way: the next call
finds the master again; so does :meth:`Mux.leave_unless` when the sentinels name another master.
Cluster's ``CLUSTERDOWN`` (some slot has no master during a failover) and ``TRYAGAIN`` are
returned as connection errors: Redis is unavailable for now, the connection stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import hiredis
from redis.exceptions import (
    BusyLoadingError,
    NoScriptError,
    ReadOnlyError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pushsvc.broker.redis.sentinel import ROLE, Locator, check_role
from pushsvc.broker.redis.url import Target

Arg = str | bytes | int | float
Command = Sequence[Arg]

_MORE = object()  # hiredis: no complete reply buffered yet
_ERRORS: tuple[tuple[str, type[ResponseError]], ...] = (
    ("NOSCRIPT ", NoScriptError),
    ("READONLY ", ReadOnlyError),
)


def reply_error(error: ResponseError) -> Exception:
    """The redis-py exception an error reply stands for (as redis-py's own parsers map them)."""
    text = str(error)
    for prefix, kind in _ERRORS:
        if text.startswith(prefix):
            return kind(text[len(prefix) :])
    if text.startswith("LOADING "):
        return BusyLoadingError(text[len("LOADING ") :])
    if text.startswith(("CLUSTERDOWN ", "TRYAGAIN ")):  # Cluster: a failover or a migration
        return RedisConnectionError(text)
    return error


class _Waiter:
    __slots__ = ("deadline", "future", "left", "replies")

    def __init__(self, future: asyncio.Future[list[Any]], count: int, deadline: float) -> None:
        self.future = future
        self.left = count
        self.replies: list[Any] = []
        self.deadline = deadline


class _Protocol(asyncio.Protocol):
    def __init__(self, mux: Mux) -> None:
        self.mux = mux
        self.reader = hiredis.Reader(replyError=ResponseError, notEnoughData=_MORE)

    def data_received(self, data: bytes) -> None:
        self.mux.heard = time.monotonic()
        reader = self.reader
        reader.feed(data)
        waiting = self.mux.waiting
        while True:
            reply = reader.gets()
            if reply is _MORE:
                return
            if not waiting:  # a reply nobody asked for: the stream is out of step
                self.mux.abort(RedisConnectionError("unexpected reply from redis"))
                return
            if isinstance(reply, ResponseError):
                reply = reply_error(reply)
                if isinstance(reply, ReadOnlyError):  # demoted: find the master again
                    self.mux.abort(RedisConnectionError(f"{self.mux.address} is read-only now"))
                    return
                if str(reply).startswith(("MOVED ", "ASK ")):  # Cluster: the slot moved
                    self.mux.abort(RedisConnectionError(f"{self.mux.address}: {reply}"))
                    return
            head = waiting[0]
            head.replies.append(reply)
            head.left -= 1
            if head.left == 0:
                waiting.popleft()
                if not head.future.done():
                    head.future.set_result(head.replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self.mux.lost(self, exc)


class Mux:
    """A lazily connected, shared command connection to the master ``locator`` finds.

    Every connection asks the server it reached for its ``ROLE`` and is given up unless it is a
    master: a server demoted by a failover, or a replica named by mistake, is never written to.
    """

    def __init__(self, locator: Locator) -> None:
        self.timeout = locator.timeout
        self._locator = locator
        target = locator.target
        self._ssl = target.tls.context() if target.tls is not None else None
        # ROLE last: its reply says whether this server takes writes
        self._hello = [*login(target), ROLE]
        self.address = ""  # where the connection goes (host:port or path), once it went
        self.waiting: deque[_Waiter] = deque()
        self._transport: asyncio.Transport | None = None
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[None] | None = None
        self._opener: asyncio.Task[None] | None = None  # referenced while it runs
        self._outbox: list[bytes] = []
        self._timer: asyncio.TimerHandle | None = None
        self.heard = 0.0  # when bytes last came from Redis (monotonic)

    async def exchange(self, packed: list[bytes]) -> list[Any]:
        """Send ``packed`` commands; one reply each, in order (an error reply in its place as an
        exception object). Raises a redis-py ConnectionError or TimeoutError, or OSError."""
        if not packed:
            return []
        if self._transport is None:
            await self._connect()
            if self._transport is None:
                raise RedisConnectionError("connection to redis lost while connecting")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        self.waiting.append(_Waiter(future, len(packed), time.monotonic() + self.timeout))
        if not self._outbox:
            loop.call_soon(self._flush)
        self._outbox += packed
        if self._timer is None:
            self._timer = loop.call_later(self.timeout, self._check)
        return await future

    def _flush(self) -> None:
        data, self._outbox = b"".join(self._outbox), []
        if self._transport is not None and data:
            self._transport.write(data)

    def _check(self, confirming: bool = False) -> None:
        """Fail everyone when the oldest caller has waited ``timeout`` and no reply at all has
        come for as long (as a socket read timeout would: a connection busy answering a big
        pipeline is not dead).

        A busy event loop runs timers before it reads sockets, so replies may be sitting unread
        when the deadline seems to have passed: the verdict waits for the next turn's timers,
        after the loop has polled the socket once."""
        self._timer = None
        if not self.waiting:
            return
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        due = max(self.waiting[0].deadline, self.heard + self.timeout)
        if now < due:
            self._timer = loop.call_later(due - now, self._check)
        elif not confirming:
            self._timer = loop.call_later(0.001, self._check, True)  # after the next poll
        else:
            self.abort(RedisTimeoutError(f"no reply from redis in {self.timeout:g} s"))

    async def _connect(self) -> None:
        if self._connecting is None:
            loop = asyncio.get_running_loop()
            self._connecting = loop.create_future()
            self._opener = loop.create_task(self._open(self._connecting), name="redis-connect")
        await asyncio.shield(self._connecting)

    async def _open(self, done: asyncio.Future[None]) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout):
                path = self._locator.target.path
                if path is not None:
                    self.address = path
                    transport, protocol = await loop.create_unix_connection(
                        lambda: _Protocol(self), path
                    )
                else:
                    host, port = await self._locator.locate()
                    self.address = f"{host}:{port}"
                    transport, protocol = await loop.create_connection(
                        lambda: _Protocol(self), host, port, ssl=self._ssl
                    )
            self._transport, self._protocol = transport, protocol
            async with asyncio.timeout(self.timeout):
                await self._greet(transport)
        except TimeoutError:
            self.abort(RedisTimeoutError(f"could not connect to redis in {self.timeout:g} s"))
            done.set_exception(RedisTimeoutError("connect timed out"))
        except (OSError, RedisConnectionError) as exc:
            self.abort(exc if isinstance(exc, RedisConnectionError) else
                       RedisConnectionError(str(exc)))  # fmt: skip
            done.set_exception(RedisConnectionError(f"could not connect to redis: {exc}"))
        else:
            done.set_result(None)
        finally:
            self._connecting = None
            if not done.done():  # cancelled by close(): nobody may wait for ever
                done.set_exception(RedisConnectionError("closed while connecting"))
            if not done.cancelled():
                done.exception()  # retrieved: nobody else may be waiting

    async def _greet(self, transport: asyncio.Transport) -> None:
        """AUTH and SELECT, as the URL asks, and ROLE: raises unless the server is a master."""
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self.waiting.append(_Waiter(future, len(self._hello), time.monotonic() + self.timeout))
        transport.write(b"".join(pack(c) for c in self._hello))
        *replies, role = await future
        refused = [reply for reply in replies if isinstance(reply, Exception)]
        if refused:
            raise RedisConnectionError(f"redis refused the connection: {refused[0]}")
        check_role(role, self.address)

    def leave_unless(self, address: str) -> bool:
        """Drop the connection unless it goes to ``address`` (host:port); True when dropped."""
        if self._transport is None or self.address == address:
            return False
        self.abort(RedisConnectionError(f"{self.address} is not the master, {address} is"))
        return True

    def abort(self, exc: Exception) -> None:
        """Drop the connection and fail every waiting caller with ``exc``."""
        transport, self._transport, self._protocol = self._transport, None, None
        self._fail(exc)
        if transport is not None:
            transport.abort()

    def lost(self, protocol: _Protocol, exc: Exception | None) -> None:
        if protocol is not self._protocol:
            return  # an aborted connection reporting late
        self._transport = self._protocol = None
        self._fail(RedisConnectionError(f"connection to redis lost: {exc or 'closed'}"))

    def _fail(self, exc: Exception) -> None:
        waiting, self.waiting = self.waiting, deque()
        self._outbox = []
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for waiter in waiting:
            if not waiter.future.done():
                waiter.future.set_exception(exc)

    async def close(self) -> None:
        """Drop the connection, and one still being made (it would outlive the close)."""
        opener = self._opener
        if opener is not None and not opener.done():
            opener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await opener
        self.abort(RedisConnectionError("closed"))


def login(target: Target) -> list[Command]:
    """The commands a new connection sends first: AUTH and SELECT, as the URL asks."""
    commands: list[Command] = []
    if target.password is not None:
        user = target.username
        commands.append(
            ("AUTH", target.password) if user is None else ("AUTH", user, target.password)
        )
    if target.db:
        commands.append(("SELECT", target.db))
    return commands


def pack(command: Command) -> bytes:
    """``command`` in RESP: an array of bulk strings (str as UTF-8, floats as ``repr``, like
    redis-py), packed by hiredis in C."""
    args = command if isinstance(command, tuple) else tuple(command)
    packed: bytes = hiredis.pack_command(args)  # type: ignore[arg-type] # its stub: 1-tuples
    return packed
