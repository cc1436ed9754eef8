"""``pushsvc trace``: one message's delivery trail across the nodes.

From ``GET /v1/messages/{id}``: when it was published, to which streams, its state; the fan-out
grouped by node (sessions written to, writes, acks, redeliveries = attempts - 1); each device's
send and ack times after the publish; and the trace id of the publish when tracing recorded one
(``GET /v1/messages/{id}/trace``), else "not traced". Exit 1 when the message has no trail.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Annotated, Any

import typer
from rich.console import Group
from rich.table import Table

from cli.api import Refused
from cli.cluster import AsJson, Cluster, cluster_flags, operator_settings, run
from cli.output import after, client_text, duration, emit_json, out, stamp, table
from pushsvc.records import MessageTrace, MessageTrail

STATE_STYLE = {"acked": "green", "delivered": "cyan", "pending": "yellow",
               "partially_acked": "yellow", "lost": "bold red", "expired": "red"}  # fmt: skip


@dataclass(frozen=True)
class NodeFanOut:
    """What one node did with the message."""

    node: str
    sessions: int  # sessions it was written to (ack: true messages)
    sent: int  # writes: first sends plus redeliveries, or the count of ack: false writes
    acked: int
    redeliveries: int
    first_sent: float | None


def fan_out(trail: MessageTrail) -> list[NodeFanOut]:
    """The trail's deliveries grouped by node, sorted by node id (a device only pushed to went
    through no node)."""
    nodes = sorted({d.node for d in trail.devices if d.node is not None} | set(trail.sent_by_node))
    rows = []
    for node in nodes:
        mine = [d for d in trail.devices if d.node == node]
        sent_at = [d.sent_at for d in mine if d.sent_at is not None]
        rows.append(
            NodeFanOut(
                node=node,
                sessions=len(mine),
                sent=sum(max(d.attempts, 1) for d in mine if d.sent_at is not None)
                + trail.sent_by_node.get(node, 0),
                acked=sum(1 for d in mine if d.acked_at is not None),
                redeliveries=sum(max(d.attempts - 1, 0) for d in mine),
                first_sent=min(sent_at, default=None),
            )
        )
    return rows


@cluster_flags()
def trace(
    message_id: Annotated[str, typer.Argument(help="The message id (from publish).")],
    as_json: AsJson = False,
    **flags: Any,
) -> None:
    """The delivery trail of MESSAGE_ID across nodes: fan-out, sends, acks, redeliveries."""
    settings = operator_settings(**flags)
    trail, context = run(_read(Cluster(settings), message_id))
    rows = fan_out(trail)
    if as_json:
        emit_json({
            "trail": trail,
            "fan_out": [asdict(r) for r in rows],
            "redeliveries": sum(r.redeliveries for r in rows),
            "traceparent": context.traceparent,
            "trace_id": context.trace_id,
        })  # fmt: skip
        return
    out.print(render(trail, context, rows, time.time()))


async def _read(cluster: Cluster, message_id: str) -> tuple[MessageTrail, MessageTrace]:
    async with cluster:
        api = await cluster.api()
        trail = await api.trail(message_id)
        try:
            context = await api.trace_context(message_id)
        except Refused as exc:  # a node without the route, or the trail just expired
            if exc.status != 404:
                raise
            context = MessageTrace(id=message_id, traceparent="", trace_id="")
        return trail, context


def render(trail: MessageTrail, context: MessageTrace, rows: list[NodeFanOut], now: float) -> Group:
    t0 = trail.published_at
    state = f"[{STATE_STYLE.get(trail.state, '')}]{trail.state}[/]"
    left = trail.expires_at - now
    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="bold")
    summary.add_column()
    summary.add_row("message", f"{trail.id}  [bold]{trail.event}[/]")
    summary.add_row("state", state)
    summary.add_row("published", stamp(t0))
    summary.add_row("expires", f"in {duration(left)}" if left > 0 else f"{duration(-left)} ago")
    summary.add_row("streams", ", ".join(f"{s} @ {o}" for s, o in trail.streams.items()))
    summary.add_row("acks", "requested" if trail.ack else "not requested (fire and forget)")
    summary.add_row("redeliveries", str(sum(r.redeliveries for r in rows)))
    summary.add_row("trace id", context.trace_id or "[dim]not traced[/]")
    parts: list[Any] = [summary]
    if rows:
        nodes = table(
            "node", ">sessions", ">writes", ">acked", ">redeliveries", ">first write",
            title="\nfan-out per node",
        )  # fmt: skip
        for r in rows:
            nodes.add_row(
                r.node, str(r.sessions) if r.sessions else "-", str(r.sent), str(r.acked),
                str(r.redeliveries), after(r.first_sent, t0),
            )  # fmt: skip
        parts.append(nodes)
    if trail.devices:
        devices = table(
            "device", "session", "node", ">sent", ">acked", ">attempts", ">redeliveries",
            title="\ndeliveries (times after the publish)",
        )  # fmt: skip
        for d in trail.devices:
            devices.add_row(
                client_text(d.device), d.session, d.node, after(d.sent_at, t0),
                after(d.acked_at, t0),
                str(d.attempts), str(max(d.attempts - 1, 0)),
            )  # fmt: skip
        parts.append(devices)
    elif not rows:
        parts.append("\n[dim]not written to any device yet[/]")
    return Group(*parts)
