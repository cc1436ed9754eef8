"""How an operator command reaches a cluster: its registry, an API node, and every node's API.

Settings: what every process shares, :class:`~pushsvc.settings.SharedSettings` (the same
``PUSHSVC_*`` environment file works on an operator's shell), plus two fields of the operator's
own, ``api_url`` and ``api_key`` (``PUSHSVC_API_URL``, ``PUSHSVC_API_KEY``), each also
a flag. Without an API key the first of ``api_keys`` is used.

Where things are read:

- **nodes and session records** — the registry in Redis when ``redis_url`` is set (it answers even
  when no node does), else the API's ``/v1/nodes`` and ``/v1/sessions``;
- **the API** (publish, kick, trace, drain) — ``api_url``, else a live node found in the registry;
- **a node's own live state** (live session counters, ``/metrics``, ``/readyz``) — that node's
  ``internal_addr`` from the registry, with the API key.

Use ``async with Cluster(settings) as cluster`` inside :func:`run`, which turns every
:class:`~cli.api.OperatorError` into one ``error:`` line and its exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import TYPE_CHECKING, Annotated, Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import typer
from pydantic import Field

from cli.api import Api, OperatorError, Unreachable, UsageError, base_url
from cli.settings import C, build_as, fail, flags_of
from cli.targets import WILDCARDS
from pushsvc.apikeys import secret_for
from pushsvc.broker.base import NodeInfo, SessionInfo
from pushsvc.errors import BrokerError, ConfigError
from pushsvc.settings import SharedSettings

if TYPE_CHECKING:
    from pushsvc.broker.redis import RedisBroker

T = TypeVar("T")

#: Seconds any one request (to Redis, a node, Alertmanager) may take.
REQUEST_TIMEOUT = 5.0


class OperatorSettings(SharedSettings):
    """The settings every process shares plus what only an operator's commands need."""

    api_url: str | None = Field(
        None, description="internal API of any node; absent: a live node found in the registry"
    )
    api_key: str | None = Field(
        None, description="internal API key; absent: the first of api_keys (then api_keys_file)"
    )

    @property
    def key(self) -> str:
        """The API key to send: ``api_key``, else the secret of the first of the nodes' keys
        (``api_keys``, then ``api_keys_file``)."""
        if self.api_key:
            return self.api_key
        try:
            return secret_for(self.api_key_entries()) or ""
        except ConfigError as exc:
            raise UsageError(exc.message) from None


def operator_settings(**flags: Any) -> OperatorSettings:
    """:class:`OperatorSettings` from ``PUSHSVC_*`` env, overridden by the flags given (not None).
    Invalid settings end the command with exit 2."""
    return build_as(OperatorSettings, **flags)


#: The settings every cluster command takes as flags (docs/cli.md, "Connecting to a cluster").
CLUSTER_FLAGS = ("redis_url", "api_url", "api_key")


def cluster_flags(*more: str) -> Callable[[C], C]:
    """:func:`~cli.settings.flags_of` the operator's settings: :data:`CLUSTER_FLAGS` and
    ``more``; the command passes its ``**flags`` to :func:`operator_settings`."""
    return flags_of(OperatorSettings, (*CLUSTER_FLAGS, *more))


AsJson = Annotated[bool, typer.Option("--json", help="Print JSON (for scripts).")]


def run(main: Coroutine[Any, Any, T], interrupted: int = 130) -> T:
    """Run an operator command's coroutine; an :class:`OperatorError` becomes one ``error:``
    line and its exit code, Ctrl-C a quiet exit with code ``interrupted``."""
    try:
        return asyncio.run(main)
    except OperatorError as exc:
        fail(exc.message, exc.exit_code)
    except KeyboardInterrupt:
        raise typer.Exit(interrupted) from None


def redacted(url: str) -> str:
    """``url`` without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def heartbeat_stale(node: NodeInfo, now: float, registry_interval: float) -> bool:
    """A node still listed whose heartbeat is older than two heartbeat periods."""
    return now - node.heartbeat > 2 * registry_interval


def node_status(node: NodeInfo, now: float, registry_interval: float) -> str:
    """``up``, ``draining`` or ``heartbeat stale`` (which wins: it is the one to act on)."""
    if heartbeat_stale(node, now, registry_interval):
        return "heartbeat stale"
    return node.state


def reachable_addr(node: NodeInfo) -> bool:
    """Whether ``node``'s internal address names a host (not a wildcard it listens on)."""
    return node.internal_addr.rpartition(":")[0] not in WILDCARDS


def api_candidate(nodes: list[NodeInfo], now: float, registry_interval: float) -> NodeInfo | None:
    """The node whose API to use: up, heartbeat fresh, routable; the freshest heartbeat wins."""
    fit = [n for n in nodes if node_status(n, now, registry_interval) == "up" and reachable_addr(n)]
    return max(fit, key=lambda n: n.heartbeat, default=None)


class Cluster:
    """A cluster as one operator command sees it. See the module docstring."""

    def __init__(self, settings: OperatorSettings, timeout: float = REQUEST_TIMEOUT) -> None:
        self.settings = settings
        self.timeout = timeout
        self._broker: RedisBroker | None = None
        self._api: Api | None = None
        self._apis = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Cluster:
        s = self.settings
        if not s.redis_url and not s.api_url:
            raise UsageError(
                "give --redis-url (PUSHSVC_REDIS_URL) to find the nodes, "
                "or --api-url (PUSHSVC_API_URL) of one node"
            )
        if s.redis_url:
            from pushsvc.brokers import redis_broker  # noqa: PLC0415 - keeps --help fast

            try:
                self._broker = redis_broker(s, timeout=min(self.timeout, 2.0))
            except (ValueError, ConfigError) as exc:
                raise UsageError(f"invalid Redis URL {redacted(s.redis_url)!r}: {exc}") from None
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._apis.aclose()
        if self._broker is not None:
            await self._broker.close()

    @property
    def has_redis(self) -> bool:
        return self._broker is not None

    @property
    def redis(self) -> RedisBroker:
        """The Redis broker (not subscribed: registry, ledger and history reads only)."""
        if self._broker is None:
            raise UsageError("this needs Redis: give --redis-url (PUSHSVC_REDIS_URL)")
        return self._broker

    def redis_down(self, exc: BrokerError) -> Unreachable:
        reason = exc.message.removeprefix("redis unreachable: ")
        return Unreachable(f"Redis at {redacted(self.settings.redis_url or '')}", reason)

    async def nodes(self) -> list[NodeInfo]:
        """Every node in the registry, sorted by id."""
        if self._broker is None:
            return sorted(await (await self.api()).nodes(), key=lambda n: n.id)
        try:
            found = await self._broker.registry.nodes()
        except BrokerError as exc:
            raise self.redis_down(exc) from None
        return sorted(found, key=lambda n: n.id)

    async def registry_sessions(
        self, user: str | None, node: str | None, limit: int
    ) -> list[SessionInfo]:
        """Session records as registered at connect time (counters not live)."""
        if self._broker is None:
            return await (await self.api()).sessions(user, node, limit)
        try:
            return await self._broker.registry.sessions(user, node, limit)
        except BrokerError as exc:
            raise self.redis_down(exc) from None

    async def api(self) -> Api:
        """The API to send publishes and commands to: ``api_url``, else a live node's."""
        if self._api is None:
            url = self.settings.api_url
            if not url:
                chosen = api_candidate(
                    await self.nodes(), time.time(), self.settings.registry_interval
                )
                if chosen is None:
                    raise Unreachable(
                        "the API", "no node in the registry is up with a fresh heartbeat"
                    )
                url = chosen.internal_addr
            self._api = await self.connect(url)
        return self._api

    async def node_api(self, node: NodeInfo) -> Api:
        """``node``'s own API, at its registered internal address."""
        if not reachable_addr(node):
            raise Unreachable(
                f"node {node.id}",
                f"it listens on {node.internal_addr}; start it with --internal-host <address>",
            )
        if self._api is not None and self._api.url == base_url(
            node.internal_addr, self.settings.internal_scheme
        ):
            return self._api
        return await self.connect(node.internal_addr)

    async def connect(self, url: str) -> Api:
        """An open :class:`Api` at ``url`` with the key, closed with the cluster."""
        if not self.settings.key:
            raise UsageError("no API key: give --api-key, PUSHSVC_API_KEY or PUSHSVC_API_KEYS")
        s = self.settings
        try:
            tls = (
                s.client_tls() if s.internal_scheme == "https" or url.startswith("https:") else None
            )
        except ConfigError as exc:
            raise UsageError(exc.message) from None
        api = Api(url, s.key, self.timeout, scheme=s.internal_scheme, tls=tls)
        return await self._apis.enter_async_context(api)
