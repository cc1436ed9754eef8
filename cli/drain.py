"""``pushsvc drain``: ask a node to drain (close code 1001, docs/protocol.md).

The node stops accepting connections and closes its sessions with 1001, and the clients reconnect
to another node and resume. The API sends the ``drain`` command over the bus. With ``--wait`` the
command then watches the registry until the node holds no session (or has left), for a rolling
restart's script: exit 1 when it has not within ``--timeout``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

import typer

from cli.cluster import AsJson, Cluster, cluster_flags, operator_settings, run
from cli.output import emit_json, out
from cli.settings import err
from pushsvc.records import NodeDraining


@cluster_flags()
def drain(
    node: Annotated[str, typer.Argument(help="The node id (see `pushsvc nodes`).")],
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait until the node has no session left.")
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds --wait waits.", min=0)] = 30.0,
    as_json: AsJson = False,
    **flags: Any,
) -> None:
    """Drain NODE: it stops accepting and closes its sessions with 1001 (clients move on)."""
    settings = operator_settings(**flags)
    accepted, left = run(_drain(Cluster(settings), node, timeout if wait else None))
    if as_json:
        emit_json({"node": accepted.node, "draining": True, "connections_left": left})
    else:
        out.print(
            f"node [bold]{accepted.node}[/] is draining: its {accepted.connections} session(s) "
            "are closed with 1001 and reconnect to other nodes"
        )
        if left == 0:
            out.print(f"node [bold]{accepted.node}[/] holds no session")
    if wait and left:
        err.print(
            f"[bold red]error:[/] node {node} still holds {left} session(s) after {timeout:g}s"
        )
        raise typer.Exit(1)


async def _drain(
    cluster: Cluster, node: str, wait: float | None
) -> tuple[NodeDraining, int | None]:
    """Ask ``node`` to drain; when ``wait`` (seconds) is given, also watch it for that long and
    return how many sessions it holds at the end."""
    async with cluster:
        accepted = await (await cluster.api()).drain(node)
        if wait is None:
            return accepted, None
        deadline = time.monotonic() + wait
        while True:
            found = next((n for n in await cluster.nodes() if n.id == node), None)
            left = 0 if found is None else found.connections
            if (found is None or found.state == "draining") and left == 0:
                return accepted, 0
            if time.monotonic() >= deadline:
                return accepted, left
            await asyncio.sleep(0.25)
