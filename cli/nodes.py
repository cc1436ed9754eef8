"""``pushsvc nodes``: every node in the registry and the state it is in.

A node is ``up`` or ``draining`` as it says itself, or ``heartbeat stale`` when it is still listed
but its last heartbeat is older than two heartbeat periods (``registry_interval``; give the nodes'
value). Exit 1 when no node is listed or one is stale.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
import typer

from cli.cluster import AsJson, Cluster, cluster_flags, node_status, operator_settings, run
from cli.output import ago, duration, emit_json, out, seconds, table
from pushsvc.broker.base import NodeInfo


@cluster_flags("registry_interval")
def nodes(as_json: AsJson = False, **flags: Any) -> None:
    """Every node: addresses, state, connections, users, uptime, version, broker lag."""
    settings = operator_settings(**flags)
    listed = run(_read(Cluster(settings)))
    now = time.time()
    rows = [described(n, now, settings.registry_interval) for n in listed]
    if as_json:
        emit_json({"nodes": rows})
    elif not rows:
        out.print("no node is registered")
    else:
        out.print(render(listed, now, settings.registry_interval))
    if not rows or any(r["status"] == "heartbeat stale" for r in rows):
        raise typer.Exit(1)


async def _read(cluster: Cluster) -> list[NodeInfo]:
    async with cluster:
        return await cluster.nodes()


def described(node: NodeInfo, now: float, registry_interval: float) -> dict[str, Any]:
    """``node``'s record with its ``status`` and ``uptime`` (seconds)."""
    return {
        **msgspec.structs.asdict(node),
        "status": node_status(node, now, registry_interval),
        "uptime": round(max(0.0, now - node.started), 3),
    }


STYLE = {"up": "green", "draining": "yellow", "heartbeat stale": "bold red"}


def render(listed: list[NodeInfo], now: float, registry_interval: float) -> Any:
    t = table(
        "node", "client", "internal", "state", ">conns", ">users", ">uptime", "version",
        ">broker lag", ">heartbeat",
    )  # fmt: skip
    for n in listed:
        status = node_status(n, now, registry_interval)
        t.add_row(
            n.id, n.client_addr, n.internal_addr, f"[{STYLE.get(status, '')}]{status}[/]",
            str(n.connections), str(n.users), duration(now - n.started), n.version,
            seconds(n.broker_lag), ago(n.heartbeat, now),
        )  # fmt: skip
    return t
