"""``pushsvc sessions``: open sessions across every node, with each node's live counters.

The registry says which nodes hold sessions (of ``--user``, on ``--node``); each of those nodes is
then asked for its own sessions (``GET /v1/local/sessions``, every counter live), all at once,
each within the request timeout. A node that does not answer is shown from the registry: its
sessions' static fields, counters unknown, and a warning naming it. Exit 1 when nothing matched.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Annotated, Any

import msgspec
import typer

from cli.api import OperatorError
from cli.cluster import AsJson, Cluster, cluster_flags, operator_settings, run
from cli.output import ago, client_text, clock, emit_json, out, seconds, table
from cli.settings import err
from pushsvc.broker.base import NodeInfo, SessionInfo

#: Sessions of one patient looked up in the registry to find the nodes that hold them.
USER_SESSIONS_MAX = 10_000


@dataclass
class Listing:
    """Sessions, oldest first; ``live`` ids have live counters; nodes that did not answer."""

    sessions: list[SessionInfo] = field(default_factory=list)
    live: set[str] = field(default_factory=set)
    unanswered: dict[str, str] = field(default_factory=dict)  # node id -> why


@cluster_flags()
def sessions(
    user: Annotated[str | None, typer.Option(help="Only this patient's sessions.")] = None,
    node: Annotated[str | None, typer.Option(help="Only the sessions on this node.")] = None,
    limit: Annotated[
        int, typer.Option(help="At most this many sessions.", min=1, max=10_000)
    ] = 100,
    as_json: AsJson = False,
    **flags: Any,
) -> None:
    """Sessions across all nodes: user, device, node, remote, since, sent/acked/pending, rtt."""
    settings = operator_settings(**flags)
    listing = run(_read(Cluster(settings), user, node, limit))
    for node_id, why in sorted(listing.unanswered.items()):
        err.print(
            f"[yellow]warning:[/] node {node_id} did not answer ({why}); "
            "its sessions are shown from the registry, without live counters"
        )
    if as_json:
        emit_json({
            "sessions": [
                {**msgspec.structs.asdict(s), "live": s.id in listing.live}
                for s in listing.sessions
            ],
            "unanswered": listing.unanswered,
        })  # fmt: skip
    elif listing.sessions:
        out.print(render(listing, time.time()))
    else:
        out.print("no open session matches")
    if not listing.sessions:
        raise typer.Exit(1)


async def _read(cluster: Cluster, user: str | None, node: str | None, limit: int) -> Listing:
    async with cluster:
        return await gather(cluster, user, node, limit)


async def gather(cluster: Cluster, user: str | None, node: str | None, limit: int) -> Listing:
    """The sessions matching ``user`` / ``node``, at most ``limit``: see the module docstring."""
    nodes = [n for n in await cluster.nodes() if node is None or n.id == node]
    recorded: dict[str, list[SessionInfo]] = {}
    if user is not None:  # ask only the nodes that hold the patient's sessions
        for s in await cluster.registry_sessions(user, node, USER_SESSIONS_MAX):
            recorded.setdefault(s.node, []).append(s)
        nodes = [n for n in nodes if n.id in recorded]

    async def ask(n: NodeInfo) -> list[SessionInfo] | str:
        try:
            return await (await cluster.node_api(n)).local_sessions(user, limit)
        except OperatorError as exc:
            if exc.exit_code == 2:  # a wrong key or bad input: the same on every node
                raise
            return exc.message

    listing = Listing()
    answers = await asyncio.gather(*(ask(n) for n in nodes))
    for n, answer in zip(nodes, answers, strict=True):
        if isinstance(answer, str):
            listing.unanswered[n.id] = answer
            if user is None:
                recorded[n.id] = await cluster.registry_sessions(None, n.id, limit)
            listing.sessions += recorded.get(n.id, [])[:limit]
        else:
            listing.sessions += answer
            listing.live.update(s.id for s in answer)
    listing.sessions.sort(key=lambda s: (s.connected_at, s.id))
    del listing.sessions[limit:]
    return listing


def render(listing: Listing, now: float) -> Any:
    t = table(
        "session", "user", "device", "node", "remote", "connected", ">sent", ">acked",
        ">pending", "last ack", ">rtt",
    )  # fmt: skip
    for s in listing.sessions:
        if s.id in listing.live:
            counts = [str(s.sent), str(s.acked), str(s.pending)]
        else:
            counts = ["[dim]?[/]"] * 3
        t.add_row(
            s.id, s.user, client_text(s.device), s.node, s.remote,
            f"{clock(s.connected_at, now)} ({ago(s.connected_at, now)})", *counts,
            ago(s.last_ack, now) if s.id in listing.live else "[dim]?[/]", seconds(s.rtt),
        )  # fmt: skip
    return t
