"""Where the writable Redis is: asked of Sentinel, then confirmed by the server itself.

:func:`locate` gives the address to connect to: the URL's server, or the master Sentinel names
(``SENTINEL get-master-addr-by-name``, asking each sentinel in turn; the one that answered is
asked first next time). A sentinel's word is not enough — during a failover, or before it
notices one, it names a server that is down or already a replica — so every connection also asks
the server it reached for its ``ROLE`` (:data:`ROLE` in its greeting, :func:`check_role` on the
reply) and is dropped when it is not a master.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from pushsvc.broker.redis.url import Address, Target

log = logging.getLogger(__name__)

ROLE = ("ROLE",)
_MORE = object()


class NotMaster(RedisConnectionError):
    """The server reached is not a master (a replica, or a sentinel's stale answer)."""


class Locator:
    """Finds the address of ``target``'s writable server (one per node, shared by its
    connections)."""

    def __init__(self, target: Target, timeout: float) -> None:
        self.target = target
        self.timeout = timeout
        self._sentinels = list(target.addresses)
        self.last: Address | None = None  # the master named last

    async def locate(self) -> Address:
        """The address of the master: the one a sentinel names, or when none answers the last
        one named. Raises a redis-py ConnectionError when there is neither."""
        target = self.target
        if target.mode != "sentinel":
            return target.addresses[0]
        assert target.master is not None
        errors: list[str] = []
        for sentinel in list(self._sentinels):
            try:
                async with asyncio.timeout(self.timeout):
                    reply = await self._ask(sentinel, target.master)
            except (OSError, TimeoutError, RedisConnectionError, ResponseError) as exc:
                errors.append(f"{sentinel[0]}:{sentinel[1]}: {exc or type(exc).__name__}")
                continue
            if not reply:
                errors.append(f"{sentinel[0]}:{sentinel[1]}: no master {target.master!r}")
                continue
            self._sentinels.remove(sentinel)
            self._sentinels.insert(0, sentinel)
            address = (reply[0].decode(), int(reply[1]))
            if address != self.last:
                log.info("redis master located", extra={"master": f"{address[0]}:{address[1]}"})
                self.last = address
            return address
        if self.last is not None:  # no sentinel answers: try the last master (ROLE tells)
            log.warning("no sentinel answers, trying the last master", extra={"errors": errors})
            return self.last
        raise RedisConnectionError("no sentinel names a master: " + "; ".join(errors))

    async def _ask(self, sentinel: Address, master: str) -> Any:
        command = ("SENTINEL", "get-master-addr-by-name", master)
        return (await ask(self.target, sentinel, [command]))[-1]


async def ask(target: Target, sentinel: Address, commands: list[tuple[str, ...]]) -> list[Any]:
    """Send ``commands`` to the sentinel at ``sentinel`` on a connection of their own (after AUTH
    with the URL's ``sentinel_password``); their replies. Raises on an error reply, OSError or
    a redis-py ConnectionError. The caller bounds the time."""
    context = target.tls.context() if target.tls is not None else None
    reader, writer = await asyncio.open_connection(sentinel[0], sentinel[1], ssl=context)
    try:
        if target.sentinel_password is not None:
            commands = [("AUTH", target.sentinel_password), *commands]
        writer.write(b"".join(hiredis.pack_command(c) for c in commands))  # type: ignore[arg-type]
        parser = hiredis.Reader(replyError=ResponseError, notEnoughData=_MORE)
        replies: list[Any] = []
        while len(replies) < len(commands):
            data = await reader.read(65536)
            if not data:
                raise RedisConnectionError("sentinel closed the connection")
            parser.feed(data)
            while (reply := parser.gets()) is not _MORE:
                replies.append(reply)
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise reply
        return replies[1:] if target.sentinel_password is not None else replies
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def check_role(reply: Any, address: str) -> None:
    """Raise :class:`NotMaster` unless ``reply`` (to ``ROLE``) says master."""
    if isinstance(reply, Exception):
        raise RedisConnectionError(f"ROLE refused by {address}: {reply}")
    role = reply[0] if isinstance(reply, list) and reply else reply
    if role != b"master":
        name = role.decode() if isinstance(role, bytes) else repr(role)
        raise NotMaster(f"{address} is a {name}, not the master")
