"""The monitor a single node runs inside itself on the in-memory broker (``pushsvc serve``
without ``--redis-url``; docs/monitoring.md).

Built here, at the edge, and handed to :func:`pushsvc.server.run` as what runs beside the node:
the ``pushsvc`` package never imports the monitor.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from pushsvc.broker.base import Broker
from pushsvc.settings import MonitorSettings, NodeSettings
from pushsvc.telemetry import metrics


@contextlib.asynccontextmanager
async def embedded_monitor(node: NodeSettings, broker: Broker) -> AsyncIterator[None]:
    """Run the monitor on ``broker`` (no HTTP listener of its own: its metrics join the node's
    ``/metrics``) until the context exits. Its settings are the node's shared ones and the
    monitor's own from ``PUSHSVC_*`` env."""
    from monitor import metrics as monitor_metrics  # noqa: PLC0415 - keeps `pushsvc --help` fast
    from monitor.alertmanager import AlertmanagerClient  # noqa: PLC0415
    from monitor.app import Monitor  # noqa: PLC0415

    settings = MonitorSettings.sharing(node)
    url = settings.alertmanager_url
    monitor = Monitor(settings, broker, AlertmanagerClient(url) if url else None)
    await monitor.start(http=False)
    metrics.include(monitor_metrics.REGISTRY)
    try:
        yield
    finally:
        await monitor.close()
