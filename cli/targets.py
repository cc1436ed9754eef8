"""``pushsvc prometheus-targets``: the cluster's nodes as a Prometheus ``file_sd`` target list.

Reads the node registry in Redis (the broker's :class:`~pushsvc.broker.base.Registry`) and writes
one target group per live node: its internal address (where ``/metrics`` is served) with the
labels ``node`` and ``version``. With ``--output`` the file is replaced atomically (written
beside it, then renamed), and only when its content changes, so Prometheus never reads half a
file. With ``--watch SECONDS`` it keeps refreshing; a failed read keeps the last good file
(an unreachable Redis must not look like a cluster without nodes).
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer

from cli.settings import build, err, fail, flags_of
from pushsvc.broker.base import NodeInfo
from pushsvc.errors import BrokerError
from pushsvc.settings import NodeSettings, Settings

WILDCARDS = ("0.0.0.0", "::", "[::]", "")  # noqa: S104 - recognised here, never bound


def file_sd(nodes: list[NodeInfo]) -> list[dict[str, Any]]:
    """The ``file_sd`` groups for ``nodes``: one per node, sorted by node id."""
    return [
        {"targets": [n.internal_addr], "labels": {"node": n.id, "version": n.version}}
        for n in sorted(nodes, key=lambda n: n.id)
    ]


def render(nodes: list[NodeInfo]) -> bytes:
    return msgspec.json.format(msgspec.json.encode(file_sd(nodes)), indent=2) + b"\n"


def write_atomically(path: Path, content: bytes) -> bool:
    """Replace ``path`` with ``content`` unless it already holds it; True when written."""
    try:
        if path.read_bytes() == content:
            return False
    except FileNotFoundError:
        pass
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(content)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


async def read_nodes(settings: Settings) -> list[NodeInfo]:
    """The live nodes in the registry (no bus subscription: only the registry is read)."""
    from pushsvc.brokers import redis_broker  # noqa: PLC0415 - only this command needs redis

    broker = redis_broker(settings)
    try:
        return await broker.registry.nodes()
    finally:
        await broker.close()


def _unroutable(nodes: list[NodeInfo]) -> None:
    for n in nodes:
        host = n.internal_addr.rpartition(":")[0]
        if host in WILDCARDS:
            err.print(
                f"[yellow]warning:[/] node {n.id} listens on {n.internal_addr}: Prometheus cannot "
                "scrape a wildcard address; start it with --internal-host <its address>"
            )


@flags_of(NodeSettings, ("redis_url",))
def prometheus_targets(
    output: Annotated[
        Path | None, typer.Option(help="file_sd JSON file to write (atomically); else stdout.")
    ] = None,
    watch: Annotated[
        float | None, typer.Option(help="Refresh every SECONDS until interrupted.", min=0.1)
    ] = None,
    **flags: Any,
) -> None:
    """Write a Prometheus file_sd target list of every live node's internal address."""
    settings = build(**flags)
    if not settings.redis_url:
        fail("give --redis-url or PUSHSVC_REDIS_URL: only a cluster has a registry to read")
    if watch is None:
        try:
            nodes = asyncio.run(read_nodes(settings))
        except (BrokerError, OSError) as exc:
            fail(f"cannot read the registry: {exc}", code=1)
        _unroutable(nodes)
        _emit(render(nodes), output)
        return
    try:
        asyncio.run(_watch(settings, output, watch))
    except KeyboardInterrupt:
        return


async def _watch(settings: Settings, output: Path | None, every: float) -> None:
    last: bytes | None = None
    failing = False
    while True:
        started = time.monotonic()
        try:
            nodes = await read_nodes(settings)
        except (BrokerError, OSError) as exc:
            if not failing:  # once per outage, not once per refresh
                err.print(f"[yellow]warning:[/] cannot read the registry, keeping the list: {exc}")
            failing = True
        else:
            if failing:
                err.print("registry readable again")
            failing = False
            content = render(nodes)
            if content != last:
                _unroutable(nodes)
                _emit(content, output)
                last = content
        await asyncio.sleep(max(0.0, every - (time.monotonic() - started)))


def _emit(content: bytes, output: Path | None) -> None:
    if output is None:
        sys.stdout.buffer.write(content)
        sys.stdout.flush()
    else:
        write_atomically(output, content)
