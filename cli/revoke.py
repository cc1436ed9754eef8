"""``pushsvc revoke``: refuse a patient's tokens issued until now and close their sessions (4001).

For a lost or stolen phone. The API stores the revocation in the broker (nodes started later
refuse the old tokens too, until the longest token lifetime has passed) and tells every node to
close the patient's sessions with 4001 ``token_revoked``. A token minted in the same second as
the revocation is refused as well; tokens minted from the next second on are accepted.
"""

from __future__ import annotations

import datetime
from typing import Any

import typer

from cli.cluster import AsJson, Cluster, cluster_flags, operator_settings, run
from cli.output import emit_json, out
from pushsvc.records import UserRevoked


@cluster_flags()
def revoke(
    user: str = typer.Argument(help="The patient whose tokens to revoke."),
    as_json: AsJson = False,
    **flags: Any,
) -> None:
    """Refuse USER's tokens issued until now and close their sessions on every node (4001)."""
    settings = operator_settings(**flags)
    revoked = run(_revoke(Cluster(settings), user))
    if as_json:
        emit_json({"user": revoked.user, "not_before": revoked.not_before,
                   "expires": revoked.expires})  # fmt: skip
        return
    since = datetime.datetime.fromtimestamp(revoked.not_before, datetime.UTC)
    out.print(
        f"revoked the tokens of [bold]{revoked.user}[/] issued before {since:%Y-%m-%d %H:%M:%S} "
        "UTC; their sessions are closing with 4001"
    )


async def _revoke(cluster: Cluster, user: str) -> UserRevoked:
    async with cluster:
        api = await cluster.api()
        return await api.revoke(user)
