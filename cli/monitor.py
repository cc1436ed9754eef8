"""``pushsvc monitor``: reconcile deliveries, run canaries and send alerts (docs/monitoring.md).

``--once`` runs one reconciliation of the buckets whose checks are due (looking back as far as a
starting monitor does), prints it and exits: 0 when nothing is missing, 1 when deliveries were
unfanned or lost, 2 on bad settings. Every flag is also ``PUSHSVC_<FLAG>`` in the environment.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from typing import Annotated, Any

import typer

from cli.settings import build_as, fail, flags_of
from monitor.alerts import shown
from monitor.reconcile import BucketReport
from pushsvc.apikeys import parse_entries
from pushsvc.errors import ConfigError
from pushsvc.settings import MonitorSettings
from pushsvc.telemetry import logging as jsonlog

#: The monitor's settings that are also its flags (``--monitor-port`` is ``monitor_port`` is
#: ``PUSHSVC_MONITOR_PORT``); the others only the environment sets.
MONITOR_FLAGS = (
    "redis_url",
    "alertmanager_url",
    "api_keys",
    "monitor_host",
    "monitor_port",
    "monitor_id",
    "monitor_interval",
    "monitor_grace",
    "ack_timeout",
    "max_attempts",
    "reconnect_window",
    "late_check",
    "loss_window",
    "canary_interval",
    "canary_stall",
    "alert_resend",
    "lease_ttl",
    "runbook_base_url",
    "log_level",
)
Opt = typer.Option


@flags_of(MonitorSettings, MONITOR_FLAGS)
def monitor(
    once: Annotated[bool, Opt("--once", help="Reconcile once, print, exit.")] = False,
    since: Annotated[float, Opt(help="With --once: look this many seconds back.")] = 3600,
    as_json: Annotated[bool, Opt("--json", help="With --once: print JSON.")] = False,
    **flags: Any,
) -> None:
    """Reconcile published, sent and acked deliveries; canary every node; alert."""
    settings = build_as(MonitorSettings, **flags)
    if not settings.redis_url:
        fail("the monitor needs the cluster's Redis: --redis-url or PUSHSVC_REDIS_URL")
    try:  # the canary's key and TLS files, checked before anything starts
        parse_entries(settings.api_key_entries())
        settings.client_tls()
    except ConfigError as exc:
        fail(exc.message)
    jsonlog.setup(settings.log_level)
    import uvloop  # noqa: PLC0415 - the event loop is chosen at the process edge

    if once:
        reports = uvloop.run(_once(settings, since))
        _print(reports, as_json)
        missing = sum(n.missing for r in reports for n in r.nodes.values())
        raise typer.Exit(1 if missing else 0)
    uvloop.run(_serve(settings))


async def _once(settings: MonitorSettings, since: float) -> list[BucketReport]:
    from monitor.app import Monitor  # noqa: PLC0415 - keeps `pushsvc --help` fast
    from monitor.reconcile import Reconciler  # noqa: PLC0415
    from pushsvc.brokers import redis_broker  # noqa: PLC0415

    broker = redis_broker(settings)
    service = Monitor(settings, broker, canaries=False)
    now = time.time()
    service.reconciler = Reconciler(service.policy, now - since)
    try:
        return await service.reconcile(now)
    finally:
        await broker.close()


async def _serve(settings: MonitorSettings) -> None:
    from monitor.alertmanager import AlertmanagerClient  # noqa: PLC0415
    from monitor.app import Monitor  # noqa: PLC0415
    from pushsvc.brokers import redis_broker  # noqa: PLC0415

    broker = redis_broker(settings)
    url = settings.alertmanager_url
    service = Monitor(settings, broker, AlertmanagerClient(url) if url else None)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await service.start()
    try:
        await stop.wait()
    finally:
        await service.close()
        await broker.close()


def _print(reports: list[BucketReport], as_json: bool) -> None:
    rows: list[dict[str, Any]] = []
    for report in reports:
        for node, counts in sorted(report.nodes.items()):
            rows.append({
                "bucket": report.bucket, "check": report.check, "node": node,
                **counts.counters, "unfanned": counts.unfanned, "lost": counts.lost,
                "expired_pairs": counts.expired,
                "samples": [f"{m.message_id} {shown(m.device)} {m.kind}" for m in counts.samples],
            })  # fmt: skip
    if as_json:
        print(json.dumps({"buckets": len(reports), "rows": rows}, indent=2))
        return
    names = ("published", "expected", "sent", "acked", "redelivered", "expired")
    print(f"{len(reports)} bucket checks")
    print(
        f"{'bucket':<20} {'node':<24} " + " ".join(f"{n[:5]:>6}" for n in names) + " unfan   lost"
    )
    for row in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(row["bucket"]))
        values = " ".join(f"{row.get(n, 0):>6}" for n in names)
        print(f"{when:<20} {row['node'][:24]:<24} {values} {row['unfanned']:>5} {row['lost']:>6}")
        for sample in row["samples"]:
            print(f"    missing: {sample}")
