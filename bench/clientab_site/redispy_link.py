"""Bench only: :class:`pushsvc.broker.redis.link.Link` sending its commands through redis-py's
``redis.asyncio.Redis`` (a connection pool; a non-transactional pipeline for several commands)
instead of the multiplexed connection, for the client-layer A/B (``python -m bench.clientab``).

Only the transport changes: :func:`install` makes the link keep its commands as tuples instead of
packing them, and replaces ``Link._exchange`` (the one place the link's commands go out) and
``Link.aclose``. Everything else — NOSCRIPT reloads, ``WAIT``, error mapping — is the link's own
code in both arms. Replies are raw RESP2 in both (redis-py's reply callbacks are cleared), with an
error reply in its place as an exception object, as the multiplexed connection gives them.

Covers the standalone and unix-socket URLs the benches use; anything else raises.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import Any

import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

Command = Sequence[str | bytes | int | float]


class PooledClient:
    """redis-py's asyncio client for the link's ``target``, configured like the link: connect
    and read timeouts of ``timeout``, no retries, RESP2, no health checks, raw replies."""

    def __init__(self, target: Any, timeout: float) -> None:
        common: dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "retry": Retry(NoBackoff(), 0),
            "health_check_interval": 0,
            "protocol": 2,
            "lib_name": None,
            "lib_version": None,
        }
        if target.path is not None:
            kwargs = {
                "unix_socket_path": target.path,
                "username": target.username,
                "password": target.password,
                "db": target.db,
            }
        elif target.mode == "standalone" and target.tls is None:
            kwargs = target.connection_kwargs(target.addresses[0])
        else:
            raise NotImplementedError(f"bench adapter: {target.mode} / TLS targets")
        self.client = redis.asyncio.Redis(**kwargs, **common)
        self.client.response_callbacks.clear()

    async def exchange(self, commands: list[Command]) -> list[Any]:
        """One reply per command, in order, an error reply in its place."""
        if len(commands) == 1:
            try:
                return [await self.client.execute_command(*commands[0])]  # type: ignore[no-untyped-call]
            except ResponseError as exc:
                return [exc]
        pipe = self.client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies

    async def aclose(self) -> None:
        await self.client.aclose()


def install(link: ModuleType) -> None:
    """Patch the ``link`` module (``pushsvc.broker.redis.link``) to use :class:`PooledClient`."""
    cls = link.Link
    init, close = cls.__init__, cls.aclose
    link.pack = tuple  # type: ignore[attr-defined] # commands stay tuples: redis-py packs them

    def init_pooled(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self._pooled = PooledClient(self.target, self.timeout)

    async def _exchange(self: Any, commands: list[Command]) -> list[Any]:
        try:
            replies: list[Any] = await self._pooled.exchange(commands)
        except (RedisError, OSError) as exc:
            raise self.failure(exc) from exc
        self.reachable = True
        return replies

    async def aclose(self: Any) -> None:
        await self._pooled.aclose()
        await close(self)

    cls.__init__ = init_pooled
    cls._exchange = _exchange
    cls.aclose = aclose
