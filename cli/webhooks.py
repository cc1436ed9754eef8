"""``pushsvc webhooks``: the webhook deliveries still owed, and each endpoint's last failure."""

from __future__ import annotations

import time
from typing import Any

import msgspec

from cli.cluster import AsJson, Cluster, cluster_flags, operator_settings, run
from cli.output import ago, emit_json, out, table
from pushsvc.records import WebhookStatus


@cluster_flags()
def webhooks(as_json: AsJson = False, **flags: Any) -> None:
    """Webhook deliveries queued (cluster-wide), escalations pending, and per endpoint its last
    failure: when, which event, what went wrong, after how many attempts."""
    settings = operator_settings(**flags)
    view = run(_read(Cluster(settings)))
    if as_json:
        emit_json(msgspec.to_builtins(view))
        return
    out.print(f"queued deliveries: {view.queue}   escalations pending: {view.escalations}")
    out.print(render(view, time.time()))


async def _read(cluster: Cluster) -> WebhookStatus:
    async with cluster:
        api = await cluster.api()
        return await api.webhooks()


def render(view: WebhookStatus, now: float) -> Any:
    t = table("endpoint", "last failure", "event", ">attempts", "error")
    for e in view.endpoints:
        f = e.last_failure
        if f is None:
            t.add_row(e.url, "none", "", "", "")
        else:
            error = f.error + (" (given up)" if f.gave_up else "")
            t.add_row(e.url, ago(f.at, now), f.event_id, str(f.attempts), error)
    if not view.endpoints:
        t.add_row("(no webhook endpoint configured)", "", "", "", "")
    return t
