"""The command connection to Redis, with every failure mapped onto pushsvc's error tree.

:class:`Link` sends every command of a node on one multiplexed connection
(:class:`pushsvc.broker.redis.mux.Mux`): concurrent callers pipeline together, a batch is one
write, and replies are parsed as they arrive. It connects with a timeout of ``timeout`` seconds,
fails a caller whose reply has not come within ``timeout``, and sends a command at most once (no
retries): an operation that cannot reach Redis fails within about ``timeout`` instead of hanging,
and a publish is never doubled by a retry after its reply was lost. The bus subscriber has a
connection of its own (:meth:`Link.subscriber`).

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
import logging
from collections.abc import Sequence
from typing import Any, Protocol

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ReadOnlyError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pushsvc.broker.redis.mux import Arg, Command, Mux, pack
from pushsvc.broker.redis.sentinel import ROLE, Locator, check_role
from pushsvc.broker.redis.subscriber import Subscriber
from pushsvc.broker.redis.url import Target, parse
from pushsvc.errors import BrokerError, BrokerUnavailable

log = logging.getLogger(__name__)

#: Errors after which Redis is, for our purposes, not there.
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, ReadOnlyError, OSError)


class Connection(Protocol):
    """The calls the bus makes on its subscriber connection (those of redis-py's asyncio
    connection, which :class:`.subscriber.Subscriber` implements), and ``where`` it goes."""

    @property
    def where(self) -> str: ...

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
    """The connections of a node to the Redis ``url`` names (see :mod:`.url`): one multiplexed
    command connection, and the bus subscriber's (:meth:`subscriber`). Both go to the master
    (asked of Sentinel for a ``redis+sentinel://`` url; on Redis Cluster, the master of
    ``slot_key``'s slot, where every key of the keyspace is) and are checked with ``ROLE``.
    ``await aclose()`` when done."""

    def __init__(self, url: str | Target, timeout: float = 1.0, *, slot_key: str = "") -> None:
        self.timeout = timeout
        self.reachable = False
        self.target = target = parse(url) if isinstance(url, str) else url
        self.locator = Locator(target, timeout, slot_key)
        self._mux = Mux(self.locator)

    async def subscriber(self) -> Connection:
        """A new connection to the master (:class:`.subscriber.Subscriber`), connected and
        checked with ``ROLE``, outside the multiplexed one: the caller owns it and must
        ``await disconnect()`` it. Raises a redis-py ConnectionError or TimeoutError when none
        can be made."""
        address = None if self.target.path is not None else await self.locator.locate()
        connection = Subscriber(self.target, address, self.timeout)
        try:
            await connection.connect()
            await connection.send_command(*ROLE, check_health=False)
            check_role(await connection.read_response(timeout=self.timeout), connection.where)
        except BaseException:
            # waits for the close (bounded by the connect timeout): a TLS transport left to
            # finish closing on its own may outlive the caller, unclosed
            await connection.disconnect()
            raise
        return connection

    async def follow_master(self) -> str | None:
        """Ask the sentinels where the master is now: its ``host:port``, or None when none
        answers or the URL names no sentinels. A command connection to another server is
        dropped (the next command goes to the master): a master that lost its place and does
        not know it yet — failed over while it kept running (a second failover right after the
        first), cut off from the sentinels, or a failover's old master started again — still
        says master to ``ROLE`` and takes writes until Sentinel makes it a replica."""
        if self.target.mode != "sentinel":
            return None
        address = await self.locator.named()
        if address is None:
            return None
        master = f"{address[0]}:{address[1]}"
        left = self._mux.address
        if self._mux.leave_unless(master):
            log.warning(
                "redis command connection left a former master",
                extra={"left": left, "master": master},
            )
        return master

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
        self,
        script: Script,
        calls: Sequence[tuple[Sequence[Arg], Sequence[Arg]]],
        *,
        replicas: int = 0,
    ) -> list[Any]:
        """:meth:`run_all`, but a call the server answered with an error has the pushsvc error
        in its place (the others ran; a script's writes before its error stay). Raises only when
        no reply came at all.

        ``replicas`` > 0: ``WAIT`` follows the calls on the same connection, for at most half
        the timeout (the connection answers nobody else meanwhile); unless that many replicas
        confirm the writes, every call that ran has :class:`BrokerUnavailable` in its place
        (its writes stay: a retry finds them by their keys)."""
        packed = [pack(("EVALSHA", script.sha, len(keys), *keys, *args)) for keys, args in calls]
        wait_ms = int(self.timeout * 500)
        wait = [pack(("WAIT", replicas, wait_ms))] if replicas > 0 else []
        replies = await self._exchange(packed + wait)
        confirmed = replies.pop() if wait else 0
        refused = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if refused:
            await self.call("SCRIPT", "LOAD", script.source)
            again = await self._exchange([packed[i] for i in refused] + wait)
            confirmed = again.pop() if wait else 0  # covers every write of the connection
            for i, reply in zip(refused, again, strict=True):
                replies[i] = reply
        out = [self.failure(r) if isinstance(r, RedisError) else r for r in replies]
        if wait and not (isinstance(confirmed, int) and confirmed >= replicas):
            shortfall = BrokerUnavailable(
                f"{confirmed} of {replicas} redis replicas confirmed the write in {wait_ms} ms"
            )
            out = [r if isinstance(r, BrokerError) else shortfall for r in out]
        return out

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
