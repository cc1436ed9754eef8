"""``pushsvc publish``: publish one message through the API and print its id.

The id goes to stdout alone (``id=$(pushsvc publish ...)``); the offsets and the number of online
sessions go to stderr, or all of it to stdout with ``--json``.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
import typer

from cli.cluster import AsJson, Cluster, cluster_flags, operator_settings, run
from cli.output import emit_json
from cli.settings import err, fail
from pushsvc.records import PublishResult


@cluster_flags()
def publish(
    event: Annotated[str, typer.Option(help="Event type, e.g. queue.called.")],
    user: Annotated[
        list[str] | None, typer.Option(help="A patient to send to (repeatable).")
    ] = None,
    topic: Annotated[
        list[str] | None, typer.Option(help="A topic to send to (repeatable).")
    ] = None,
    to_all: Annotated[bool, typer.Option("--all", help="Send to every session.")] = False,
    data: Annotated[str, typer.Option(help="The payload, JSON.")] = "null",
    ttl: Annotated[int | None, typer.Option(help="Seconds it may wait for a device.")] = None,
    ack: Annotated[
        bool | None, typer.Option("--ack/--no-ack", help="Ask devices to ack. [users: yes]")
    ] = None,
    idempotency_key: Annotated[
        str | None, typer.Option(help="Publish at most once per key.")
    ] = None,
    as_json: AsJson = False,
    **flags: Any,
) -> None:
    """Publish to --user U, --topic T or --all; print the message id."""
    body = request(event, user or [], topic or [], to_all, data)
    body.update(
        {k: v for k, v in (("ttl", ttl), ("ack", ack), ("idempotency_key", idempotency_key))
         if v is not None}
    )  # fmt: skip
    settings = operator_settings(**flags)
    result = run(_publish(Cluster(settings), body))
    if as_json:
        emit_json(result)
        return
    print(result.id, flush=True)
    where = ", ".join(f"{stream} @ {offset}" for stream, offset in result.streams.items())
    if result.duplicate:
        err.print(f"[yellow]duplicate:[/] the key was published before, as {result.id} ({where})")
        return
    err.print(
        f"[dim]{where}; {result.online_sessions} online session(s) on the node that took it[/]"
    )


def request(
    event: str, users: list[str], topics: list[str], to_all: bool, data: str
) -> dict[str, Any]:
    """The publish body; a usage error (exit 2) when the target or the data will not do."""
    if sum((bool(users), bool(topics), to_all)) != 1:
        fail("give exactly one of --user, --topic or --all")
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        fail(f"--data is not JSON: {exc}")
    to: dict[str, Any] = (
        {"users": users} if users else {"topics": topics} if topics else {"all": True}
    )
    return {"to": to, "event": event, "data": payload}


async def _publish(cluster: Cluster, body: dict[str, Any]) -> PublishResult:
    async with cluster:
        return await (await cluster.api()).publish(body)
