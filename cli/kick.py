"""``pushsvc kick``: close a session, or every session of a patient, with 4010 (closed by operator).

The API finds the node that holds each session and sends it the ``close_session`` command over the
bus; the close happens on that node a moment later. 4010 tells the client not to reconnect with
the same token. Exit 1 when there is no such open session.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cli.cluster import AsJson, Cluster, cluster_flags, operator_settings, run
from cli.output import emit_json, out
from cli.settings import fail
from pushsvc.records import HeldSession


@cluster_flags()
def kick(
    session: Annotated[str | None, typer.Argument(help="The session id to close.")] = None,
    user: Annotated[
        str | None, typer.Option(help="Close every session of this patient instead.")
    ] = None,
    as_json: AsJson = False,
    **flags: Any,
) -> None:
    """Close SESSION (or every session of --user) with 4010, on whichever node holds it."""
    if (session is None) == (user is None):
        fail("give a SESSION id or --user, not both")
    settings = operator_settings(**flags)
    closing = run(_kick(Cluster(settings), session, user))
    if as_json:
        emit_json({"closing": closing})
        return
    for c in closing:
        out.print(f"closing session [bold]{c.session}[/] on node [bold]{c.node}[/] with 4010")


async def _kick(cluster: Cluster, session: str | None, user: str | None) -> list[HeldSession]:
    async with cluster:
        api = await cluster.api()
        if session is not None:
            kicked = await api.kick(session)
            return [HeldSession(session=kicked.session, node=kicked.node)]
        assert user is not None
        return await api.kick_user(user)
