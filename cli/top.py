"""``pushsvc top``: a live view of the nodes and their message rates; q or Ctrl-C quits.

Every ``--interval`` seconds: the nodes from the registry, and each node's counters from its
``/metrics`` (published, sent, acked, redelivered), all nodes at once, each within the interval.
Rates are the counters' change between two refreshes, per second. A node that does not answer
shows ``?``; a failed refresh keeps the last view with the error above it.

Keys are read from stdin without waiting for Enter (cbreak mode on a terminal, restored on exit);
without a usable stdin only Ctrl-C quits. :func:`watch` is the loop, fed by any key queue and
drawing on any Rich console, so it runs the same under a test as in a terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import termios
import time
import tty
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any

import typer
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.text import Text

from cli.api import OperatorError
from cli.cluster import Cluster, cluster_flags, node_status, operator_settings, run
from cli.nodes import STYLE
from cli.output import ago, out, rate, seconds, table
from pushsvc.broker.base import NodeInfo

#: The counters shown as rates, by column name.
COUNTERS = {
    "published/s": "pushsvc_messages_published_total",
    "sent/s": "pushsvc_messages_sent_total",
    "acked/s": "pushsvc_messages_acked_total",
    "redelivered/s": "pushsvc_redeliveries_total",
}
QUIT_KEYS = frozenset("qQ")


@dataclass
class Sample:
    """One refresh: the nodes and each answering node's counters, at monotonic time ``at``."""

    at: float
    now: float
    nodes: list[NodeInfo]
    counters: dict[str, dict[str, float]] = field(default_factory=dict)  # node -> name -> value
    unanswered: dict[str, str] = field(default_factory=dict)  # node -> why


def counters_of(exposition: str) -> dict[str, float]:
    """The :data:`COUNTERS` in a Prometheus text exposition, summed over their labels."""
    wanted = set(COUNTERS.values())
    found = dict.fromkeys(wanted, 0.0)
    for family in text_string_to_metric_families(exposition):
        for s in family.samples:
            if s.name in wanted:
                found[s.name] += s.value
    return found


def rates(before: Sample | None, now: Sample) -> dict[str, dict[str, float | None]]:
    """Per node and column, events per second between two samples; None where unknown (first
    sample, a node missing from either, or a counter that went back: the node restarted)."""
    out: dict[str, dict[str, float | None]] = {}
    for node in now.counters:
        old = before.counters.get(node) if before is not None else None
        dt = now.at - before.at if before is not None else 0.0
        row: dict[str, float | None] = {}
        for column, name in COUNTERS.items():
            value = now.counters[node][name]
            if old is None or dt <= 0 or value < old[name]:
                row[column] = None
            else:
                row[column] = (value - old[name]) / dt
        out[node] = row
    return out


async def sample(cluster: Cluster) -> Sample:
    nodes = await cluster.nodes()
    taken = Sample(time.monotonic(), time.time(), nodes)

    async def scrape(n: NodeInfo) -> dict[str, float] | str:
        try:
            return counters_of(await (await cluster.node_api(n)).metrics())
        except OperatorError as exc:
            return exc.message
        except ValueError as exc:  # not a Prometheus exposition
            return f"unreadable /metrics: {exc}"

    for n, got in zip(nodes, await asyncio.gather(*(scrape(n) for n in nodes)), strict=True):
        if isinstance(got, str):
            taken.unanswered[n.id] = got
        else:
            taken.counters[n.id] = got
    return taken


def render(
    before: Sample | None, now: Sample, registry_interval: float, problem: str = ""
) -> Group:
    """One frame of the view."""
    per_node = rates(before, now)
    conns = sum(n.connections for n in now.nodes)
    users = sum(n.users for n in now.nodes)
    clock = time.strftime("%H:%M:%S", time.localtime(now.now))
    head = Text.from_markup(
        f"[bold]pushsvc top[/]  {len(now.nodes)} node(s) · {conns} connections · "
        f"{users} users · {clock}   [dim]q quits[/]"
    )
    t = table("node", "state", ">conns", ">users", *(">" + c for c in COUNTERS),
              ">broker lag", ">heartbeat")  # fmt: skip
    totals: dict[str, float | None] = dict.fromkeys(COUNTERS, 0.0)
    for n in now.nodes:
        status = node_status(n, now.now, registry_interval)
        row = per_node.get(n.id) or dict.fromkeys(COUNTERS)
        cells = []
        for column in COUNTERS:
            value = row[column]
            total = totals[column]
            totals[column] = None if value is None or total is None else total + value
            cells.append("[dim]?[/]" if n.id in now.unanswered else rate(value))
        t.add_row(
            n.id, f"[{STYLE.get(status, '')}]{status}[/]", str(n.connections), str(n.users),
            *cells, seconds(n.broker_lag), ago(n.heartbeat, now.now),
        )  # fmt: skip
    if len(now.nodes) > 1:
        t.add_row("[bold]cluster[/]", "", str(conns), str(users),
                  *(rate(totals[c]) for c in COUNTERS), "", "")  # fmt: skip
    parts: list[RenderableType] = [head]
    if problem:
        parts.append(Text.from_markup(f"[bold red]{problem}[/] [dim](showing the last view)[/]"))
    parts.append(t)
    for node_id, why in sorted(now.unanswered.items()):
        parts.append(Text(f"{node_id}: {why}", style="yellow"))
    if not now.nodes:
        parts.append(Text("no node is registered", style="bold red"))
    return Group(*parts)


async def watch(
    cluster: Cluster, console: Console, interval: float, keys: asyncio.Queue[str]
) -> None:
    """Refresh the view every ``interval`` seconds until a quit key arrives on ``keys``.

    The first sample's failure is raised (a wrong address should say so and exit); later ones
    are shown above the last good view while it keeps trying."""
    before: Sample | None = None
    now = await sample(cluster)
    interval_ = cluster.settings.registry_interval
    with Live(console=console, auto_refresh=False, screen=console.is_terminal) as live:
        problem = ""
        while True:
            live.update(render(before, now, interval_, problem), refresh=True)
            if await quit_within(keys, interval):
                return
            try:
                before, now, problem = now, await sample(cluster), ""
            except OperatorError as exc:
                problem = exc.message


async def quit_within(keys: asyncio.Queue[str], period: float) -> bool:
    """Whether a quit key arrives within ``period`` seconds (other keys are ignored)."""
    deadline = time.monotonic() + period
    while (left := deadline - time.monotonic()) > 0:
        try:
            key = await asyncio.wait_for(keys.get(), left)
        except TimeoutError:
            return False
        if key in QUIT_KEYS:
            return True
    return False


@contextlib.contextmanager
def key_presses(keys: asyncio.Queue[str]) -> Iterator[bool]:
    """Feed the keys typed on stdin into ``keys`` while in the block; yields whether stdin can
    be read at all. On a terminal, cbreak mode (no Enter needed, Ctrl-C still interrupts) is set
    for the block and the previous mode restored after it, however it ends."""
    try:
        fd = sys.stdin.fileno()
    except (AttributeError, ValueError, OSError):  # no real stdin (e.g. under a test runner)
        yield False
        return
    loop = asyncio.get_running_loop()
    saved = termios.tcgetattr(fd) if os.isatty(fd) else None

    def readable() -> None:
        data = os.read(fd, 64)
        if not data:  # end of input: only Ctrl-C quits now
            loop.remove_reader(fd)
            return
        for key in data.decode(errors="replace"):
            keys.put_nowait(key)

    if saved is not None:
        tty.setcbreak(fd, termios.TCSANOW)
    try:
        loop.add_reader(fd, readable)
        yield True
    finally:
        loop.remove_reader(fd)
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@cluster_flags("registry_interval")
def top(
    interval: Annotated[float, typer.Option(help="Seconds between refreshes.", min=0.2)] = 2.0,
    **flags: Any,
) -> None:
    """A live view of the nodes and their message rates (q or Ctrl-C quits)."""
    settings = operator_settings(**flags)
    run(_top(Cluster(settings, timeout=min(5.0, max(1.0, interval))), interval), interrupted=0)


async def _top(cluster: Cluster, interval: float) -> None:
    keys: asyncio.Queue[str] = asyncio.Queue()
    async with cluster:
        with key_presses(keys):
            await watch(cluster, out, interval, keys)
