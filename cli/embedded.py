"""The monitor a single node runs inside itself on the in-memory broker (``pushsvc serve``
without ``--redis-url``; docs/monitoring.md).

Built here, at the edge, and handed to :func:`pushsvc.server.run` as what runs beside the node:
the ``pushsvc`` package never imports the monitor.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from cli.settings import fail, problems
from pushsvc.errors import ConfigError
from pushsvc.settings import MonitorSettings, NodeSettings

if TYPE_CHECKING:
    from pushsvc.broker.base import Broker


#: The monitor's own settings (not shared with the node) that are also flags of ``pushsvc serve``:
#: all but its listener's, since it has none.
EMBEDDED_FLAGS = [
    name
    for name in MonitorSettings.model_fields
    if name not in NodeSettings.model_fields and name not in ("monitor_host", "monitor_port")
]


def embedded_settings(node: NodeSettings, **flags: Any) -> MonitorSettings:
    """The embedded monitor's settings: ``node``'s shared ones, and its own from ``PUSHSVC_*``
    env overridden by the flags given (not None). Invalid ones end the command with exit 2."""
    try:
        return MonitorSettings.sharing(node, **{k: v for k, v in flags.items() if v is not None})
    except ValidationError as exc:
        fail(f"invalid settings: {problems(exc)}")
    except ConfigError as exc:
        fail(exc.message)


@contextlib.asynccontextmanager
async def embedded_monitor(settings: MonitorSettings, broker: Broker) -> AsyncIterator[None]:
    """Run the monitor on ``broker`` (no HTTP listener of its own: its metrics join the node's
    ``/metrics``) until the context exits; ``settings`` from :func:`embedded_settings`."""
    from monitor import metrics as monitor_metrics  # noqa: PLC0415 - keeps `pushsvc --help` fast
    from monitor.alertmanager import AlertmanagerClient  # noqa: PLC0415
    from monitor.app import Monitor  # noqa: PLC0415
    from pushsvc.telemetry import metrics  # noqa: PLC0415

    url = settings.alertmanager_url
    monitor = Monitor(settings, broker, AlertmanagerClient(url) if url else None)
    await monitor.start(http=False)
    metrics.include(monitor_metrics.REGISTRY)
    try:
        yield
    finally:
        await monitor.close()
