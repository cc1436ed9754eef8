"""Assembles and runs one node process: broker, node, client listener and internal API.

Shutdown is ordered (SIGTERM or SIGINT): stop accepting clients and close them with 1001, flush
the accounting, deregister, stop the internal API, close the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Iterator

import uvicorn

from monitor import metrics as monitor_metrics
from monitor.alertmanager import AlertmanagerClient
from monitor.app import Monitor
from pushsvc.broker.base import Broker
from pushsvc.broker.memory import MemoryBroker
from pushsvc.http.internal import create_app
from pushsvc.node.gateway import Node
from pushsvc.settings import Settings
from pushsvc.telemetry import metrics

log = logging.getLogger(__name__)


class _InternalServer(uvicorn.Server):
    """uvicorn without its own signal handling: the node's shutdown order decides."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def make_broker(settings: Settings) -> Broker:
    if settings.redis_url:
        from pushsvc.broker.redis import RedisBroker  # noqa: PLC0415 - only clusters need redis

        return RedisBroker(settings)
    return MemoryBroker(
        history_size=settings.history_size,
        history_ttl=settings.history_ttl,
        push_retention=settings.push_retention,
    )


async def serve(settings: Settings, client_sock: socket.socket | None = None) -> None:
    """Run a node until SIGTERM/SIGINT, then shut it down in order."""
    if not settings.metrics:
        metrics.disable_recording()
    node = Node(settings, make_broker(settings))
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
    )
    internal = _InternalServer(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await node.start(client_sock)
    embedded = await _embedded_monitor(settings, node) if not settings.redis_url else None
    api = asyncio.create_task(internal.serve())
    waiter = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({api, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if embedded is not None:
            await embedded.close()
        await node.close()
        internal.should_exit = True
        await api
        waiter.cancel()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def _embedded_monitor(settings: Settings, node: Node) -> Monitor:
    """DESIGN §2: on the memory broker there is one node, and the monitor runs inside it."""
    alertmanager = (
        AlertmanagerClient(settings.alertmanager_url) if settings.alertmanager_url else None
    )
    monitor = Monitor(settings, node.broker, alertmanager)
    await monitor.start(http=False)
    metrics.include(monitor_metrics.REGISTRY)
    return monitor


def run(settings: Settings) -> None:
    """Run :func:`serve` on uvloop."""
    import uvloop  # noqa: PLC0415 - the event loop is chosen at the process edge

    uvloop.run(serve(settings))
