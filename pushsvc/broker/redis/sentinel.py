"""Where the writable Redis is: asked of Sentinel, then confirmed by the server itself.

:func:`locate` gives the address to connect to: the URL's server, or the master Sentinel names
(``SENTINEL get-master-addr-by-name``, asking each sentinel in turn; the one that answered is
asked first next time). A sentinel's word is not enough — during a failover, or before it
notices one, it names a server that is down or already a replica — so every connection also asks
the server it reached for its ``ROLE`` (:data:`ROLE` in its greeting, :func:`check_role` on the
reply) and is dropped when it is not a master. Nor is ``ROLE`` enough: a master Sentinel has
replaced but not yet demoted still says master, so :meth:`Locator.named` is asked again every
second (:meth:`pushsvc.broker.redis.link.Link.follow_master`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from pushsvc.broker.keys import key_slot
from pushsvc.broker.redis.url import Address, Target

log = logging.getLogger(__name__)

ROLE = ("ROLE",)
_MORE = object()


class NotMaster(RedisConnectionError):
    """The server reached is not a master (a replica, or a sentinel's stale answer)."""


class Locator:
    """Finds the address of ``target``'s writable server (one per node, shared by its
    connections)."""

    def __init__(self, target: Target, timeout: float, slot_key: str = "") -> None:
        self.target = target
        self.timeout = timeout
        self.slot = key_slot(slot_key)  # Cluster: the slot whose master is wanted
        self._sentinels = list(target.addresses)  # sentinels, or the cluster's seed nodes
        self.last: Address | None = None  # the master named last

    async def locate(self) -> Address:
        """The address of the master: the one a sentinel names, or when none answers the last
        one named. Raises a redis-py ConnectionError when there is neither."""
        target = self.target
        if target.mode == "standalone":
            return target.addresses[0]
        errors: list[str] = []
        address = await self._named(errors)
        if address is not None:
            return address
        if self.last is not None:  # no sentinel answers: try the last master (ROLE tells)
            log.warning("no sentinel answers, trying the last master", extra={"errors": errors})
            return self.last
        raise RedisConnectionError("no sentinel names a master: " + "; ".join(errors))

    async def named(self) -> Address | None:
        """The address of the master a sentinel (or Cluster node) names now; None when none
        answers, or for a standalone server."""
        if self.target.mode == "standalone":
            return None
        return await self._named([])

    async def _named(self, errors: list[str]) -> Address | None:
        """Ask each sentinel in turn (the one that answers is asked first next time): the
        master named, or None and why in ``errors``."""
        for sentinel in list(self._sentinels):
            try:
                async with asyncio.timeout(self.timeout):
                    reply = await self._ask(sentinel)
            except (OSError, TimeoutError, RedisConnectionError, ResponseError) as exc:
                errors.append(f"{sentinel[0]}:{sentinel[1]}: {exc or type(exc).__name__}")
                continue
            if not reply:
                errors.append(f"{sentinel[0]}:{sentinel[1]}: no master for {self._wanted}")
                continue
            self._sentinels.remove(sentinel)
            self._sentinels.insert(0, sentinel)
            address = (reply[0].decode(), int(reply[1]))
            if address != self.last:
                log.info("redis master located", extra={"master": f"{address[0]}:{address[1]}"})
                self.last = address
            return address
        return None

    @property
    def _wanted(self) -> str:
        return repr(self.target.master) if self.target.mode == "sentinel" else f"slot {self.slot}"

    async def _ask(self, server: Address) -> Any:
        """``[host, port]`` of the master, as ``server`` (a sentinel, or a cluster node) knows
        it; None when it knows none."""
        if self.target.mode == "sentinel":
            command = ("SENTINEL", "get-master-addr-by-name", self.target.master or "")
            return (await ask(self.target, server, [command]))[-1]
        [ranges] = await ask(self.target, server, [("CLUSTER", "SLOTS")], sentinel=False)
        for first, last, master, *_ in ranges:
            if first <= self.slot <= last:
                host = master[0] or server[0].encode()  # empty: the node asked
                return [host, master[1]]
        return None


async def ask(
    target: Target, address: Address, commands: list[tuple[str, ...]], *, sentinel: bool = True
) -> list[Any]:
    """Send ``commands`` to ``address`` on a connection of their own (after AUTH: the URL's
    ``sentinel_password`` for a sentinel, its user and password for a data node); their
    replies. Raises on an error reply, OSError or a redis-py ConnectionError. The caller bounds
    the time."""
    context = target.tls.context() if target.tls is not None else None
    auth: tuple[str, ...] = ()
    if sentinel and target.sentinel_password is not None:
        auth = ("AUTH", target.sentinel_password)
    elif not sentinel and target.password is not None:
        auth = ("AUTH", *filter(None, (target.username, target.password)))
    if auth:
        commands = [auth, *commands]
    reader, writer = await asyncio.open_connection(address[0], address[1], ssl=context)
    try:
        writer.write(b"".join(hiredis.pack_command(c) for c in commands))  # type: ignore[arg-type]
        parser = hiredis.Reader(replyError=ResponseError, notEnoughData=_MORE)
        replies: list[Any] = []
        while len(replies) < len(commands):
            data = await reader.read(65536)
            if not data:
                raise RedisConnectionError("the server closed the connection")
            parser.feed(data)
            while (reply := parser.gets()) is not _MORE:
                replies.append(reply)
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise reply
        return replies[1:] if auth else replies
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
