"""Redis Cluster for ``python -m bench.scaleout --redis cluster``: how the keyspace's traffic
spreads over the masters.

:class:`ClusterStore` is the six processes of :class:`bench.chaos_topology.ClusterRedis` (three
masters with a replica each, made by ``redis-cli --cluster create``) without persistence, like
the standalone ``redis-server`` of the bench. It names what each process holds
(:class:`Holding`: its role, the partitions of the keyspace whose hash tag's slot it serves, and
whether it serves the tag of the keys outside the partitions — the one tag of every key before
the partitions) and reads each one's ``total_commands_processed``, ``INFO commandstats`` and
``used_cpu_user + used_cpu_sys`` (:class:`ServerReading`). :func:`server_figures` turns two
readings into each process's commands and CPU µs per message, and each master's share of the
masters' commands and CPU beside its share of the partitions.
"""

from __future__ import annotations

import contextlib
import math
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.chaos_topology import ClusterRedis, RedisProc
from pushsvc.broker.keys import PARTITIONS, Keyspace, key_slot

#: After the topology's data config: the bench's Redis keeps nothing on disk.
NO_PERSISTENCE = ["appendonly no"]


@dataclass(frozen=True, slots=True)
class Holding:
    """What one process of the cluster serves."""

    address: str
    role: str  # "master" | "replica"
    partitions: tuple[int, ...] = ()
    control: bool = False  # the slot of the keys outside the partitions


@dataclass(frozen=True, slots=True)
class ServerReading:
    """One process's counters at one instant."""

    address: str
    commands: int
    cpu_seconds: float
    calls: dict[str, int]


def slot_ranges(fields: list[str]) -> list[tuple[int, int]]:
    """The slot ranges (inclusive) of a ``CLUSTER NODES`` line's slot fields; migrating and
    importing markers (``[…]``) are not held."""
    out = []
    for f in fields:
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", f)
        if m:
            out.append((int(m[1]), int(m[2] or m[1])))
    return out


def holdings(cluster_nodes: str, tags: list[str], control_slot: int) -> list[Holding]:
    """Each process of ``CLUSTER NODES``, masters first (by port), then replicas: the
    partitions (indexes into ``tags``) whose slot its ranges hold, and the control slot."""
    out = []
    for line in cluster_nodes.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        address = fields[1].split("@", 1)[0]
        if "master" not in fields[2]:
            out.append(Holding(address, "replica"))
            continue
        ranges = slot_ranges(fields[8:])
        held = tuple(k for k, tag in enumerate(tags) if _within(key_slot(tag), ranges))
        out.append(Holding(address, "master", held, _within(control_slot, ranges)))
    return sorted(out, key=lambda h: (h.role != "master", int(h.address.rsplit(":", 1)[1])))


def _within(slot: int, ranges: list[tuple[int, int]]) -> bool:
    return any(lo <= slot <= hi for lo, hi in ranges)


def parse_info(text: str) -> dict[str, str]:
    """``INFO`` output (any sections) as a dict."""
    pairs = (ln.partition(":") for ln in text.splitlines() if ":" in ln)
    return {k: v.strip() for k, _, v in pairs}


def reading(address: str, info: dict[str, str]) -> ServerReading:
    """A process's counters from its ``INFO stats cpu commandstats``."""
    calls: dict[str, int] = {}
    for key, value in info.items():
        if key.startswith("cmdstat_"):
            fields = dict(f.split("=", 1) for f in value.split(",") if "=" in f)
            with contextlib.suppress(KeyError, ValueError):
                calls[key.removeprefix("cmdstat_")] = int(fields["calls"])
    try:
        cpu = float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    except (KeyError, ValueError):
        cpu = math.nan
    return ServerReading(address, int(info.get("total_commands_processed", 0)), cpu, calls)


def server_figures(
    published: int,
    layout: list[Holding],
    start: list[ServerReading],
    end: list[ServerReading],
) -> list[dict[str, object]]:
    """Per process of ``layout`` (readings in the same order): commands and CPU µs per
    message, and the calls per message of each command it ran; for a master also its share of
    the masters' commands and CPU, and of the partitions."""
    per = max(published, 1)
    cmds = [(b.commands - a.commands) / per for a, b in zip(start, end, strict=True)]
    cpu = [(b.cpu_seconds - a.cpu_seconds) / per * 1e6 for a, b in zip(start, end, strict=True)]
    masters = [i for i, h in enumerate(layout) if h.role == "master"]
    cmds_total = sum(cmds[i] for i in masters)
    cpu_total = sum(cpu[i] for i in masters)
    out: list[dict[str, object]] = []
    for i, h in enumerate(layout):
        row: dict[str, object] = {
            "address": h.address,
            "role": h.role,
            "commands_per_message": cmds[i],
            "cpu_us_per_message": cpu[i],
            "calls_per_message": _calls(per, start[i], end[i]),
        }
        if h.role == "master":
            row |= {
                "partitions": list(h.partitions),
                "control": h.control,
                "partition_share": len(h.partitions) / PARTITIONS,
                "command_share": cmds[i] / cmds_total if cmds_total else math.nan,
                "cpu_share": cpu[i] / cpu_total if cpu_total else math.nan,
            }
        out.append(row)
    return out


def _calls(per: int, start: ServerReading, end: ServerReading) -> dict[str, float]:
    return {
        cmd: (n - start.calls.get(cmd, 0)) / per
        for cmd, n in sorted(end.calls.items())
        if n != start.calls.get(cmd, 0)
    }


def summed(readings: list[ServerReading], layout: list[Holding]) -> ServerReading:
    """The masters' counters added up (what one server would have done)."""
    masters = [r for r, h in zip(readings, layout, strict=True) if h.role == "master"]
    calls: dict[str, int] = {}
    for r in masters:
        for cmd, n in r.calls.items():
            calls[cmd] = calls.get(cmd, 0) + n
    return ServerReading(
        "masters",
        sum(r.commands for r in masters),
        sum(r.cpu_seconds for r in masters),
        calls,
    )


class ClusterStore:
    """Six ``redis-server`` processes on free ports in a temporary directory, three masters
    with a replica each; :meth:`stop` ends them and removes the directory."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="pushsvc-bench-cluster-"))
        self.topology = ClusterRedis(self.dir, NO_PERSISTENCE)
        self.layout: list[Holding] = []
        self._procs: list[RedisProc] = []

    @property
    def url(self) -> str:
        return self.topology.url

    @property
    def pids(self) -> list[int]:
        return [p.proc.pid for p in self.topology.data if p.proc is not None]

    def start(self) -> None:
        """Start the processes, make the cluster, wait until whole; read who holds what."""
        self.topology.start()
        keys = Keyspace()
        nodes = self.topology.data[0].cli("CLUSTER", "NODES")
        self.layout = holdings(nodes, keys.tags, self.topology.slot)
        by_address = {p.address: p for p in self.topology.data}
        self._procs = [by_address[h.address] for h in self.layout]

    def flush(self) -> None:
        """``FLUSHALL`` on every master (the replicas follow)."""
        for p, h in zip(self._procs, self.layout, strict=True):
            if h.role == "master":
                p.cli("FLUSHALL")

    def read(self) -> list[ServerReading]:
        """Each process's counters, in :attr:`layout` order."""
        return [
            reading(p.address, parse_info(p.answers("INFO", "stats", "cpu", "commandstats") or ""))
            for p in self._procs
        ]

    def stop(self) -> None:
        try:
            self.topology.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
