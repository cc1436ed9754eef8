"""Assembles and runs one node process: broker, internal API, node and what runs beside it.

They start in that order, each one only after the one before it started, and stop in the
reverse order (one :class:`contextlib.AsyncExitStack`), so whatever fails half-way closes exactly
what had been started. What runs beside the node (``beside``: the embedded monitor of a single
node, built by the CLI) is entered last and exited first. On SIGTERM or SIGINT: it stops; the
node stops accepting clients, closes them with 1001, flushes its accounting and deregisters; the
internal API stops (it answered ``/readyz`` 503 during the drain); the broker closes.

A listener address that cannot be bound raises :class:`ConfigError` (after closing what had
started). A broker that cannot be reached neither stops the start nor the stop: the node keeps
trying to join (see :mod:`pushsvc.node.gateway`) and a stop while it is down still closes every
session with 1001 and returns normally.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import ssl
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn

from pushsvc.broker.base import Broker
from pushsvc.brokers import make_broker
from pushsvc.errors import ConfigError
from pushsvc.http.client_listener import edge_factory
from pushsvc.http.internal import create_app
from pushsvc.node.gateway import Node
from pushsvc.settings import Settings
from pushsvc.telemetry import metrics

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)

#: What runs beside a node, on its broker: entered once the node started, exited before it stops.
Beside = Callable[[Broker], contextlib.AbstractAsyncContextManager[object]]


class _InternalServer(uvicorn.Server):
    """uvicorn without its own signal handling: the node's shutdown order decides."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(
    settings: Settings, client_sock: socket.socket | None = None, beside: Beside | None = None
) -> None:
    """Run a node until SIGTERM/SIGINT (or until its internal API stops), then stop it in
    order."""
    if not settings.metrics:
        metrics.disable_recording()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    async with contextlib.AsyncExitStack() as stack:
        for sig in SIGNALS:
            loop.add_signal_handler(sig, stop.set)
            stack.callback(loop.remove_signal_handler, sig)
        broker = make_broker(settings)
        node = Node(settings, broker)  # subscribes to the bus: before the broker starts
        await broker.start()
        stack.push_async_callback(broker.close)
        await node.tokens.start()  # the identity provider's keys (JWKS), fetched in the background
        stack.push_async_callback(node.tokens.close)
        api = _start_api(node)
        stack.push_async_callback(_stop_api, *api)
        try:
            await node.start(edge_factory(node), client_sock)
        except OSError as exc:  # the broker's failures are not raised: the node keeps trying
            where = f"{settings.host}:{settings.port}"
            raise ConfigError(f"cannot listen for clients on {where}: {exc.strerror}") from None
        stack.push_async_callback(node.close)
        if beside is not None:
            await stack.enter_async_context(beside(broker))
        waiter = asyncio.create_task(stop.wait())
        stack.callback(waiter.cancel)
        await asyncio.wait({api[1], waiter}, return_when=asyncio.FIRST_COMPLETED)
        log.info("stopping", extra={"node": node.id, "signal": stop.is_set()})


def _start_api(node: Node) -> tuple[_InternalServer, asyncio.Task[None]]:
    """Bind the internal listener and serve the API of ``node`` on it. Raises
    :class:`ConfigError` when the address cannot be bound (uvicorn would exit the process)."""
    settings = node.settings
    host, port = settings.internal_host, settings.internal_port
    try:
        sock = socket.create_server(
            (host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET, backlog=2048
        )
    except OSError as exc:
        why = f"cannot listen for the internal API on {host}:{port}: {exc.strerror}"
        raise ConfigError(why) from None
    node.internal_addr = f"{host}:{sock.getsockname()[1]}"  # the port, when 0 asked for any
    log.info("internal API listening", extra={"address": node.internal_addr})
    config = uvicorn.Config(
        create_app(node),
        host=settings.internal_host,
        port=settings.internal_port,
        loop="none",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_config=None,
        server_header=False,
        **_tls(settings),
    )
    server = _InternalServer(config)
    return server, asyncio.create_task(server.serve(sockets=[sock]))


async def _stop_api(server: _InternalServer, task: asyncio.Task[None]) -> None:
    server.should_exit = True
    await task


def _tls(settings: Settings) -> dict[str, Any]:
    """uvicorn's TLS options for the internal listener: HTTPS with ``internal_tls_cert`` and
    ``internal_tls_key``; client certificates required when ``internal_tls_client_ca`` is set."""
    if settings.internal_tls_cert is None:
        return {}
    options: dict[str, Any] = {
        "ssl_certfile": str(settings.internal_tls_cert),
        "ssl_keyfile": str(settings.internal_tls_key),
    }
    if settings.internal_tls_client_ca is not None:
        options["ssl_ca_certs"] = str(settings.internal_tls_client_ca)
        options["ssl_cert_reqs"] = ssl.CERT_REQUIRED
    return options


def run(settings: Settings, beside: Beside | None = None) -> None:
    """Run :func:`serve` on uvloop."""
    import uvloop  # noqa: PLC0415 - the event loop is chosen at the process edge

    uvloop.run(serve(settings, beside=beside))
