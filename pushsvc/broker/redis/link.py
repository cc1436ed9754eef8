"""The command connection to Redis, with every failure mapped onto pushsvc's error tree.

:class:`Link` sends every command of a node on one multiplexed connection
(:class:`pushsvc.broker.redis.mux.Mux`): concurrent callers pipeline together, a batch is one
write, and replies are parsed as they arrive. It connects with a timeout of ``timeout`` seconds,
fails a caller whose reply has not come within ``timeout``, and sends a command at most once (no
retries): an operation that cannot reach Redis fails within about ``timeout`` instead of hanging,
and a publish is never doubled by a retry after its reply was lost. The bus subscriber has a
connection of its own (:meth:`Link.connection`).

Commands are packed here (:func:`pack`, a few lines of RESP). Replies are raw RESP2 — bytes,
ints, flat lists and None — parsed next to the command that asked for them.

Failures: a connection error or timeout, or a reply saying Redis cannot serve yet (``LOADING``: a
restarted Redis still reading its data; ``READONLY``) raises :class:`BrokerUnavailable` and marks
the link unreachable until a command succeeds again; any other Redis error raises
:class:`BrokerError`. An error reply is never returned as a value.
Callers never see a redis-py exception.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Protocol, cast

from redis.asyncio import ConnectionPool
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ReadOnlyError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pushsvc.broker.redis.mux import Arg, Command, Mux, pack
from pushsvc.errors import BrokerError, BrokerUnavailable

#: Errors after which Redis is, for our purposes, not there.
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, ReadOnlyError, OSError)


class Connection(Protocol):
    """The calls made on one redis-py asyncio connection."""

    async def connect(self) -> None: ...

    async def send_command(self, *args: Arg, check_health: bool = True) -> None: ...

    async def send_packed_command(
        self, command: list[bytes], check_health: bool = True
    ) -> None: ...

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
        self._mux = Mux(url, timeout)
        # Only the settings of the connections made by :meth:`connection`: nothing is pooled.
        self._template = ConnectionPool.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
            protocol=2,
        )

    def connection(self) -> Connection:
        """A new, unconnected connection with the pool's settings, outside the pool: the caller
        owns it and must ``await disconnect()`` it."""
        template = self._template
        made: AbstractConnection = template.connection_class(**template.connection_kwargs)
        return cast(Connection, made)

    def failure(self, exc: BaseException) -> BrokerError:
        """The pushsvc error for a redis-py or socket failure; marks the link unreachable."""
        if isinstance(exc, UNREACHABLE):
            self.reachable = False
            return BrokerUnavailable(f"redis unreachable: {exc}")
        return BrokerError(f"redis error: {exc}")

    async def call(self, *args: Arg) -> Any:
        """Send one command; its raw reply."""
        return self._checked(await self._exchange([pack(args)]))[0]

    async def pipeline(self, commands: Sequence[Command]) -> list[Any]:
        """Send ``commands`` in one round trip (not a transaction); their raw replies in order."""
        if not commands:
            return []
        return self._checked(await self._exchange([pack(c) for c in commands]))

    async def run(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        """Run ``script`` once; its reply."""
        return (await self.run_all(script, [(keys, args)]))[0]

    async def run_all(
        self, script: Script, calls: Sequence[tuple[Sequence[Arg], Sequence[Arg]]]
    ) -> list[Any]:
        """Run ``script`` once per ``(keys, args)`` call, in order and in one round trip; their
        replies. Calls the server refused with NOSCRIPT (a restarted Redis has no scripts) are
        sent again, alone, after loading the script: nothing runs twice."""
        replies = await self.run_each(script, calls)
        for reply in replies:
            if isinstance(reply, BrokerError):
                raise reply
        return replies

    async def run_each(
        self, script: Script, calls: Sequence[tuple[Sequence[Arg], Sequence[Arg]]]
    ) -> list[Any]:
        """:meth:`run_all`, but a call the server answered with an error has the pushsvc error
        in its place (the others ran; a script's writes before its error stay). Raises only when
        no reply came at all."""
        packed = [pack(("EVALSHA", script.sha, len(keys), *keys, *args)) for keys, args in calls]
        replies = await self._exchange(packed)
        refused = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if refused:
            await self.call("SCRIPT", "LOAD", script.source)
            again = await self._exchange([packed[i] for i in refused])
            for i, reply in zip(refused, again, strict=True):
                replies[i] = reply
        return [self.failure(r) if isinstance(r, RedisError) else r for r in replies]

    def _checked(self, replies: list[Any]) -> list[Any]:
        """``replies``, or the pushsvc error for the first error among them (an error reply of
        any kind: LOADING while a restarted Redis reads its data is BrokerUnavailable)."""
        for reply in replies:
            if isinstance(reply, RedisError):
                raise self.failure(reply) from reply
        return replies

    async def _exchange(self, packed: list[bytes]) -> list[Any]:
        """Send ``packed`` commands and read a reply for each; an error reply is returned in
        its place."""
        try:
            replies = await self._mux.exchange(packed)
        except (RedisError, OSError) as exc:
            raise self.failure(exc) from exc
        self.reachable = True
        return replies

    async def aclose(self) -> None:
        """Close the connection (idempotent)."""
        await self._mux.close()
        await self._template.aclose()
