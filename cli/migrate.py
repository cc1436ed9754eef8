"""``pushsvc migrate-keyspace``: move the keys of nodes before the partitioned keyspace to their
names now (:mod:`pushsvc.broker.redis.migrate`), with every node stopped."""

from __future__ import annotations

import dataclasses
import time
from typing import Annotated, Any

import typer

from cli.api import OperatorError
from cli.cluster import AsJson, Cluster, cluster_flags, heartbeat_stale, operator_settings, run
from cli.output import emit_json, out, table
from pushsvc.errors import BrokerError

DryRun = Annotated[bool, typer.Option("--dry-run", help="Count what would move; move nothing.")]


class NodesRunning(OperatorError):
    """Nodes are up: they would write while the keys move."""


@cluster_flags("registry_interval")
def migrate_keyspace(dry_run: DryRun = False, as_json: AsJson = False, **flags: Any) -> None:
    """Move history, trails, idempotency keys and accounting written before the keyspace was
    partitioned to their names now. Stop every node first; run it once before starting the new
    ones (a second run moves nothing)."""
    settings = operator_settings(**flags)
    moved = run(_migrate(Cluster(settings), dry_run))
    if as_json:
        emit_json({"dry_run": dry_run, **dataclasses.asdict(moved)})
        return
    t = table("keys", "found" if dry_run else "moved")
    for kind, count in moved.keys.items():
        t.add_row(kind, str(count))
    out.print(t)
    if moved.body_copies:
        out.print(f"bodies copied into more than one partition: {moved.body_copies} extra copies")
    if moved.dropped_bodies:
        out.print(f"bodies no history entry refers to, dropped: {moved.dropped_bodies}")
    if dry_run:
        out.print("dry run: nothing moved")


async def _migrate(cluster: Cluster, dry_run: bool) -> Any:
    from pushsvc.broker.redis.migrate import migrate  # noqa: PLC0415 - keeps --help fast

    async with cluster:
        broker = cluster.redis
        now = time.time()
        live = [
            n.id
            for n in await cluster.nodes()
            if not heartbeat_stale(n, now, cluster.settings.registry_interval)
        ]
        if live and not dry_run:
            raise NodesRunning(
                f"{len(live)} node(s) are running ({', '.join(live[:5])}): stop every node, "
                "then migrate, then start the new ones"
            )
        try:
            return await migrate(broker.partitions, dry_run=dry_run)
        except BrokerError as exc:
            raise OperatorError(f"migration stopped: {exc.message}") from None
