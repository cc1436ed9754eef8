"""The command connections to Redis, with every failure mapped onto pushsvc's error tree.

:class:`Link` owns one connection pool. Sockets connect and read with a timeout of ``timeout``
seconds and a command is sent at most once (no retries inside redis-py): an operation that cannot
reach Redis fails within about ``timeout`` instead of hanging, and a publish is never doubled by a
retry after its reply was lost.

Replies are raw RESP2 — bytes, ints, flat lists and None, with no redis-py response callbacks —
and are parsed next to the command that asked for them.

Failures: a connection error or timeout raises :class:`BrokerUnavailable` and marks the link
unreachable until a command succeeds again; any other Redis error raises :class:`BrokerError`.
Callers never see a redis-py exception.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Protocol, cast

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
)
from redis.exceptions import (
    NoScriptError,
    ReadOnlyError,
    RedisError,
)
from redis.exceptions import (
    TimeoutError as RedisTimeoutError,
)

from pushsvc.errors import BrokerError, BrokerUnavailable

Arg = str | bytes | int | float
Command = Sequence[Arg]

#: Errors after which Redis is, for our purposes, not there.
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, ReadOnlyError, OSError)


class _Commands(Protocol):
    async def execute_command(self, *args: Arg) -> Any: ...


class _Pipeline(Protocol):
    def execute_command(self, *args: Arg) -> object: ...

    async def execute(self, raise_on_error: bool = True) -> list[Any]: ...

    async def reset(self) -> None: ...


class Connection(Protocol):
    """The calls the bus makes on its own connection (a redis-py asyncio connection)."""

    async def connect(self) -> None: ...

    async def send_command(self, *args: Arg, check_health: bool = True) -> None: ...

    async def read_response(self, timeout: float | None = None) -> Any: ...  # noqa: ASYNC109 - redis-py API

    async def disconnect(self, nowait: bool = False) -> None: ...


class Script:
    """A Lua script known by its SHA1; run with :meth:`Link.run`."""

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()


class Link:
    """A pool of command connections to ``url``. ``await aclose()`` when done."""

    def __init__(self, url: str, timeout: float = 1.0) -> None:
        self.timeout = timeout
        self.reachable = False
        self.pool: ConnectionPool = ConnectionPool.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
            protocol=2,
        )
        client = Redis(connection_pool=self.pool)
        client.response_callbacks.clear()  # raw replies, parsed where each command is sent
        self._redis = client
        self._client = cast(_Commands, client)

    def connection(self) -> Connection:
        """A new, unconnected connection with the pool's settings, outside the pool: the caller
        owns it and must ``await disconnect()`` it."""
        made: AbstractConnection = self.pool.connection_class(**self.pool.connection_kwargs)
        return cast(Connection, made)

    def failure(self, exc: BaseException) -> BrokerError:
        """The pushsvc error for a redis-py or socket failure; marks the link unreachable."""
        if isinstance(exc, UNREACHABLE):
            self.reachable = False
            return BrokerUnavailable(f"redis unreachable: {exc}")
        return BrokerError(f"redis error: {exc}")

    async def call(self, *args: Arg) -> Any:
        """Send one command; its raw reply."""
        try:
            reply = await self._client.execute_command(*args)
        except (RedisError, OSError) as exc:
            raise self.failure(exc) from exc
        self.reachable = True
        return reply

    async def pipeline(self, commands: Sequence[Command]) -> list[Any]:
        """Send ``commands`` in one round trip (not a transaction); their raw replies in order."""
        if not commands:
            return []
        pipe = cast(_Pipeline, self._redis.pipeline(transaction=False))
        try:
            for command in commands:
                pipe.execute_command(*command)
            replies = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise self.failure(exc) from exc
        finally:
            await pipe.reset()
        self.reachable = True
        return replies

    async def run(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        """Run ``script`` by SHA; load it first when the server does not know it (a restart)."""
        try:
            return await self._evalsha(script, keys, args)
        except NoScriptError:
            await self.call("SCRIPT", "LOAD", script.source)
        try:
            return await self._evalsha(script, keys, args)
        except NoScriptError as exc:
            raise self.failure(exc) from exc

    async def _evalsha(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        try:
            reply = await self._client.execute_command(
                "EVALSHA", script.sha, len(keys), *keys, *args
            )
        except NoScriptError:
            raise
        except (RedisError, OSError) as exc:
            raise self.failure(exc) from exc
        self.reachable = True
        return reply

    async def aclose(self) -> None:
        """Close every connection of the pool (idempotent)."""
        await self._redis.aclose()
        await self.pool.aclose()
