"""Cost per user-targeted message as the number of nodes grows, the code before a change beside
the code now, in one run.

Run from the repository root::

    python -m bench.scaleout                                  # 2, 4, 8 nodes, the code now
    python -m bench.scaleout --nodes 2,4,8 --before 99b58ec   # before | now per node count
    python -m bench.scaleout --redis cluster --nodes 2,4 --before 62fef41   # each master's share

For each node count N it starts N ``pushsvc serve`` processes (separate processes, not
``--workers``) on free ports, all on one ``redis-server`` of its own (emptied with ``FLUSHALL``
before each step), nodes and Redis free to run on every CPU this process could use before it
pinned itself; and one load worker (``bench.wsload``, pinned to ``--client-cpus`` with this
process) per node that opens ``--users-per-node`` clients to it, one per user (``u<i>``), which
ack what they get. Then it publishes ``{"to":{"users":["u<i>"]}}`` to random connected users
at ``--rate`` per second for ``--duration`` seconds, the requests going round-robin to the
nodes' internal APIs.

Over the publish phase (and a short settle after it) it measures, per node: CPU time
(utime+stime from ``/proc``, the node's process and its children) and the
``pushsvc_bus_messages_received_total`` delta; and for Redis the ``total_commands_processed``
delta, the calls per command (``INFO commandstats``) and its CPU time. Each is divided by the
messages accepted: node CPU µs per message (summed over the nodes, and per node), each node's
received share (1.0 when every node gets every message, 1/N at best for user-targeted routing),
Redis commands and Redis CPU µs per message. Each node's CPU with its clients open and no
traffic is measured for ``--idle`` seconds before the publish phase; "net of idle" takes that
rate over the window away (the heartbeats, timers and bus probes of N nodes are a cost of N
nodes, not of the messages). Latency runs from ``time.time_ns()`` just before
the publish request is written to the frame's arrival at its client (one machine clock).

``--before REV`` exports that commit with ``git archive`` and runs the same series on it,
interleaved: before N=2, now N=2, before N=4, … Prints a table and writes
``bench/results/scaleout-<UTC time>.json``.

``--redis cluster`` runs the steps on a Redis Cluster of three masters with a replica each
(:mod:`bench.scaleout_cluster`; ``FLUSHALL`` on every master before each step): the Redis figures
are then the masters' sums, and a second table gives each master's commands and CPU µs per
message (``INFO stats`` and ``INFO cpu`` deltas over the same window), its share of the masters'
and its share of the keyspace's partitions.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import math
import os
import random
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench import procstat, redisproc, runner, server, stats
from bench.api import ApiClient
from bench.common import (
    USER_EVENT,
    Close,
    Ramp,
    Ramped,
    Setup,
    Status,
    user_id,
)
from bench.node import DISTURBED_SHARE
from bench.phases import PublishTally, collect_user, paced
from bench.regression import export
from bench.report import log, write_json
from bench.scaleout_cluster import ClusterStore, ServerReading, server_figures, summed
from bench.workers import REPO_ROOT, WorkerGroup
from pushsvc.broker.keys import PARTITIONS

BUS_RECEIVED = "pushsvc_bus_messages_received_total"
USER_PREFIX = "u"
COLUMNS = (
    "nodes", "code", "node CPU µs/msg (sum)", "net of idle", "per node (mean / max)",
    "received share (mean / max)", "Redis cmds/msg", "Redis CPU µs/msg", "p50 / p99 ms",
    "missing",
)  # fmt: skip
SERVER_COLUMNS = (
    "nodes", "code", "Redis", "partitions (share)", "cmds/msg", "cmd share", "CPU µs/msg",
    "CPU share",
)  # fmt: skip

Store = redisproc.RedisProc | ClusterStore


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.scaleout",
        description="Node CPU, bus share and Redis commands per user-targeted message vs nodes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--nodes", default="2,4,8", help="comma-separated node counts")
    p.add_argument("--users-per-node", type=int, default=500, help="clients (one user each)")
    p.add_argument("--rate", type=float, default=1000.0, help="user messages per second")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of publishing")
    p.add_argument("--before", help="commit of the code before (git archive); default: none")
    p.add_argument("--concurrency", type=int, default=50, help="handshakes in flight per worker")
    p.add_argument("--client-cpus", default="1", help="CPUs of the load workers and the publisher")
    p.add_argument("--settle", type=float, default=2.0, help="seconds after the ramp")
    p.add_argument(
        "--idle", type=float, default=5.0, help="seconds of no traffic to measure idle node CPU"
    )
    p.add_argument("--drain", type=float, default=15.0, help="seconds to wait for stragglers")
    p.add_argument("--seed", type=int, default=1, help="for the choice of users")
    p.add_argument(
        "--redis",
        choices=("standalone", "cluster"),
        default="standalone",
        help="one redis-server, or a Redis Cluster of 3 masters with a replica each",
    )
    p.add_argument("--timeout", type=float, default=600.0, help="limit per step, seconds")
    p.add_argument("--label", default="")
    p.add_argument("--json", type=Path, help="default bench/results/scaleout-<time>.json")
    a = p.parse_args(argv)
    try:
        a.node_counts = [int(x) for x in a.nodes.split(",") if x.strip()]
    except ValueError:
        p.error(f"--nodes wants comma-separated integers, got {a.nodes!r}")
    if not a.node_counts or min(a.node_counts) < 1:
        p.error("--nodes wants positive node counts")
    return a


def plan(node_counts: list[int], with_before: bool) -> list[tuple[int, str]]:
    """The steps in run order: ``(nodes, arm)``, before and now interleaved per node count."""
    arms = ("before", "now") if with_before else ("now",)
    return [(n, arm) for n in node_counts for arm in arms]


def calls_by_command(commandstats: dict[str, str]) -> dict[str, int]:
    """``INFO commandstats`` (as ``RedisProc.info`` returns it) → calls per command name."""
    out: dict[str, int] = {}
    for key, value in commandstats.items():
        if not key.startswith("cmdstat_"):
            continue
        fields = dict(f.split("=", 1) for f in value.split(",") if "=" in f)
        with contextlib.suppress(KeyError, ValueError):
            out[key.removeprefix("cmdstat_")] = int(fields["calls"])
    return out


@dataclass(frozen=True, slots=True)
class Reading:
    """What the run reads at the start and the end of the publish phase."""

    node_cpu_seconds: list[float]
    node_received: list[float]
    redis_commands: int
    redis_calls: dict[str, int]
    redis_cpu_seconds: float = math.nan
    at: float = 0.0  # when it was read (monotonic seconds)
    servers: list[ServerReading] = field(default_factory=list)  # each process of a Cluster


def figures(
    published: int, start: Reading, end: Reading, idle: list[float] | None = None
) -> dict[str, object]:
    """Per-message figures between two readings of the same nodes. ``idle``: each node's CPU
    seconds per second with no traffic (heartbeats, timers, the bus probe), measured before the
    publish phase: the net figure takes that much per second of the window away, so what is
    left is what the messages cost."""
    per = max(published, 1)
    cpu_us = [
        (b - a) / per * 1e6
        for a, b in zip(start.node_cpu_seconds, end.node_cpu_seconds, strict=True)
    ]
    window = end.at - start.at
    net_us = [us - rate * window / per * 1e6 for us, rate in zip(cpu_us, idle or [], strict=False)]
    share = [(b - a) / per for a, b in zip(start.node_received, end.node_received, strict=True)]
    calls = {
        cmd: (n - start.redis_calls.get(cmd, 0)) / per
        for cmd, n in sorted(end.redis_calls.items())
        if n != start.redis_calls.get(cmd, 0)
    }
    return {
        "published": published,
        "node_cpu_us_per_message_sum": sum(cpu_us),
        "node_cpu_us_per_message": cpu_us,
        "node_cpu_us_per_message_mean": sum(cpu_us) / len(cpu_us) if cpu_us else math.nan,
        "node_cpu_us_per_message_max": max(cpu_us, default=math.nan),
        "node_idle_cpu_per_second": idle or [],
        "node_cpu_net_us_per_message": net_us,
        "node_cpu_net_us_per_message_sum": sum(net_us) if idle else math.nan,
        "received_share": share,
        "received_share_mean": sum(share) / len(share) if share else math.nan,
        "received_share_max": max(share, default=math.nan),
        "redis_commands_per_message": (end.redis_commands - start.redis_commands) / per,
        "redis_cpu_us_per_message": (end.redis_cpu_seconds - start.redis_cpu_seconds) / per * 1e6,
        "redis_calls_per_message": calls,
    }


def server_rows(step: dict[str, object]) -> list[list[str]]:
    """The lines of the per-master table, from a step run on a Cluster: one per master, then
    the replicas added up."""
    n = runner.num
    servers = step.get("redis_servers")
    if not isinstance(servers, list):
        return []
    head = [str(step["nodes"]), str(step["arm"])]
    rows = []
    for s in servers:
        if s.get("role") != "master":
            continue
        held = f"{len(s['partitions'])} ({n(s['partition_share']):.2f})"
        rows.append(
            [
                *head,
                f"master {s['address']}",
                held + (" + control" if s.get("control") else ""),
                f"{n(s['commands_per_message']):.2f}",
                f"{n(s['command_share']):.2f}",
                f"{n(s['cpu_us_per_message']):.0f}",
                f"{n(s['cpu_share']):.2f}",
            ]
        )
    replicas = [s for s in servers if s.get("role") == "replica"]
    if replicas:
        cmds = sum(n(s["commands_per_message"]) for s in replicas)
        cpu = sum(n(s["cpu_us_per_message"]) for s in replicas)
        label = f"{len(replicas)} replicas"
        rows.append([*head, label, "", f"{cmds:.2f}", "", f"{cpu:.0f}", ""])
    return rows


def table_row(step: dict[str, object]) -> list[str]:
    """One line of the printed table, from a step of the result document."""
    d, n = runner.dig, runner.num
    p50, p99 = n(d(step, "latency_ms", "p50")), n(d(step, "latency_ms", "p99"))
    return [
        str(step["nodes"]),
        str(step["arm"]),
        f"{n(step.get('node_cpu_us_per_message_sum')):.0f}",
        f"{n(step.get('node_cpu_net_us_per_message_sum')):.0f}",
        (
            f"{n(step.get('node_cpu_us_per_message_mean')):.0f} / "
            f"{n(step.get('node_cpu_us_per_message_max')):.0f}"
        ),
        f"{n(step.get('received_share_mean')):.2f} / {n(step.get('received_share_max')):.2f}",
        f"{n(step.get('redis_commands_per_message')):.2f}",
        f"{n(step.get('redis_cpu_us_per_message')):.0f}",
        f"{p50:.1f} / {p99:.1f}",
        f"{n(step.get('missing')):.0f} of {n(step.get('published')):.0f}",
    ]


def read(redis: Store, nodes: list[server.StartedServer], received: list[float]) -> Reading:
    """Node CPU and Redis counters now; ``received`` is each node's bus counter, read separately
    (over HTTP, which costs the node CPU: read it outside the CPU window). On a Cluster the
    Redis counters are the masters' sums, and each process's are kept."""
    if isinstance(redis, ClusterStore):
        servers = redis.read()
        total = summed(servers, redis.layout)
        return Reading(
            node_cpu_seconds=[_tree_cpu(x.pid) for x in nodes],
            node_received=received,
            redis_commands=total.commands,
            redis_calls=total.calls,
            redis_cpu_seconds=total.cpu_seconds,
            at=time.monotonic(),
            servers=servers,
        )
    return Reading(
        node_cpu_seconds=[_tree_cpu(x.pid) for x in nodes],
        node_received=received,
        redis_commands=int(redis.info("stats").get("total_commands_processed", 0)),
        redis_calls=calls_by_command(redis.info("commandstats")),
        redis_cpu_seconds=procstat.cpu_seconds(redis.pid),
        at=time.monotonic(),
    )


async def idle_cpu(nodes: list[server.StartedServer], seconds: float) -> list[float]:
    """Each node's CPU seconds per second over ``seconds`` with its clients open and no
    traffic."""
    before, t0 = [_tree_cpu(x.pid) for x in nodes], time.monotonic()
    await asyncio.sleep(seconds)
    after, t1 = [_tree_cpu(x.pid) for x in nodes], time.monotonic()
    return [(b - a) / (t1 - t0) for a, b in zip(before, after, strict=True)]


def _tree_cpu(pid: int) -> float:
    pids = [pid, *procstat.descendants(pid)] if procstat.alive(pid) else []
    return procstat.sample(pids).cpu_seconds if pids else math.nan


async def bus_received(nodes: list[server.StartedServer]) -> list[float]:
    """Each node's ``pushsvc_bus_messages_received_total`` (NaN where it cannot be read)."""
    out: list[float] = []
    for node in nodes:
        value = None
        try:
            async with ApiClient(node.internal_urls[0], None, size=1) as api:
                resp = await api.get("/metrics")
            if resp.status == 200:
                value = stats.metric_total(stats.parse_metrics(resp.body.decode()), BUS_RECEIVED)
        except OSError as exc:
            log(f"GET {node.internal_urls[0]}/metrics failed: {exc}")
        out.append(math.nan if value is None else value)
    return out


def flushall(redis: Store) -> None:
    """Empty the benchmark's Redis: each step starts from no history, sessions or streams."""
    if isinstance(redis, ClusterStore):
        redis.flush()
        return
    cmd = ["redis-cli", "-p", str(redis.port), "FLUSHALL"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)


async def step(
    a: argparse.Namespace, n: int, arm: str, code: Path, redis: Store, tag: str
) -> dict[str, object]:
    """One step: N fresh nodes running ``code``, their clients, the publish phase; its figures."""
    flushall(redis)
    api_key, secret = secrets.token_urlsafe(24), secrets.token_urlsafe(32)
    json_path: Path = a.json_path
    nodes: list[server.StartedServer] = []
    group: WorkerGroup | None = None
    doc: dict[str, object] = {"nodes": n, "arm": arm, "code": str(code)}
    try:
        for i in range(n):
            env = {
                "PUSHSVC_API_KEYS": api_key,
                "PUSHSVC_TOKEN_SECRET": secret,
                "PUSHSVC_HEARTBEAT": "3600",
                "PUSHSVC_REDIS_URL": redis.url,
                "PUSHSVC_NODE_ID": f"scale-{tag}-{i}",
                **runner.code_env(code),
            }
            log_path = json_path.with_suffix(f".{tag}.node-{i}.log")
            nodes.append(server.start(server.DEFAULT_CMD, env, a.all_cpus, log_path, []))
        await asyncio.gather(*(server.wait_ready(x, 120.0) for x in nodes))
        log(f"{tag}: {n} nodes ready (pids {[x.pid for x in nodes]})")
        doc["node_pids"] = [x.pid for x in nodes]
        run_id = secrets.token_hex(6)
        base = ipaddress.IPv4Address("127.0.0.2")
        setups = [
            Setup(
                worker=i, run=run_id, url=node.client_url, source_ip=str(base + i),
                first=i * a.users_per_node, count=a.users_per_node, concurrency=a.concurrency,
                connect_timeout=30.0, deadline=a.timeout + 60, cpus=a.client_cpu_list,
                user_prefix=USER_PREFIX, device_prefix="bench-", token_ttl=7200, topics=[],
                token_secret=secret,
            )
            for i, node in enumerate(nodes)
        ]  # fmt: skip
        group = await WorkerGroup.start(setups)
        ramped = await group.call(Ramp(), Ramped)
        connected = sorted(i for r in ramped for i in r.connected)
        failed = sum(r.failed for r in ramped)
        doc["clients"] = {"connected": len(connected), "failed": failed}
        log(f"{tag}: {len(connected)} clients open, {failed} failed")
        if not connected:
            raise RuntimeError("no client connected")
        await asyncio.sleep(a.settle)
        idle = await idle_cpu(nodes, a.idle)
        doc.update(await publish_phase(a, nodes, group, redis, api_key, run_id, connected, idle))
        doc["rss_at_end_mib"] = [
            procstat.sample([x.pid, *procstat.descendants(x.pid)]).rss_kib / 1024 for x in nodes
        ]
        await group.call(Close(timeout=10.0), Status)
    finally:
        if group is not None:
            await group.stop(15.0)
        for node in nodes:
            node.stop(15.0)
    return doc


async def publish_phase(
    a: argparse.Namespace,
    nodes: list[server.StartedServer],
    group: WorkerGroup,
    redis: Store,
    api_key: str,
    run_id: str,
    connected: list[int],
    idle: list[float],
) -> dict[str, object]:
    """Publish to random connected users, round-robin over the nodes; read the counters around
    it; collect the arrivals."""
    total = int(a.rate * a.duration)
    rng = random.Random(a.seed)
    tally = PublishTally()
    sent, errors = tally.sent, tally.errors
    async with contextlib.AsyncExitStack() as stack:
        apis = [
            await stack.enter_async_context(ApiClient(x.internal_urls[0], api_key, size=16))
            for x in nodes
        ]

        def one(seq: int) -> Coroutine[Any, Any, None]:
            user = user_id(USER_PREFIX, rng.choice(connected))
            body = {"to": {"users": [user]}, "event": USER_EVENT,
                    "data": {"seq": seq, "run": run_id}}  # fmt: skip
            return tally.post(apis[seq % len(apis)], "/v1/messages", body, seq)

        received0 = await bus_received(nodes)
        start = read(redis, nodes, received0)
        node_pids = [p for x in nodes for p in (x.pid, *procstat.descendants(x.pid))]
        window = procstat.Window(node_pids, group.pids, _pids(redis))
        load = os.getloadavg()
        log(f"publishing {total} user messages at {a.rate:g}/s over {len(nodes)} nodes")
        publish_seconds = await paced(total, a.rate, one)
    arrivals: dict[int, int] = {}
    # The end reading waits for the deliveries (up to 2 s), not for stragglers: idle node time
    # would be counted as cost otherwise.
    await collect_user(group, sent, arrivals, time.monotonic() + min(2.0, a.drain))
    end = read(redis, nodes, [])
    cpu = window.close()
    end = replace(end, node_received=await bus_received(nodes))
    duplicates, _ = await collect_user(group, sent, arrivals, time.monotonic() + a.drain)
    latency = [(arrivals[s] - t) / 1e6 for s, t in sent.items() if s in arrivals]
    out = figures(len(sent), start, end, idle)
    if isinstance(redis, ClusterStore):
        out["redis_servers"] = server_figures(len(sent), redis.layout, start.servers, end.servers)
    out.update(
        {
            "requested": total,
            "publish_seconds": publish_seconds,
            "publish_errors": dict(errors),
            "delivered": len(latency),
            "missing": sum(1 for s in sent if s not in arrivals),
            "duplicates": duplicates,
            "latency_ms": stats.summary(latency),
            "cpu_window": cpu,
            "load_average_at_start": load,
        }
    )
    other = runner.num(cpu.get("other_cpu_seconds"))
    wall = runner.num(cpu.get("seconds"))
    out["disturbed"] = bool(other > DISTURBED_SHARE * wall)
    return out


def _pids(redis: Store) -> list[int]:
    return redis.pids if isinstance(redis, ClusterStore) else [redis.pid]


def start_redis(kind: str, cpus: list[int]) -> Store:
    """The bench's own Redis, started on ``cpus``: one ``redis-server``, or a Cluster."""
    if kind == "standalone":
        return redisproc.start(cpus)
    cluster = ClusterStore()
    try:
        cluster.start()
        for pid in cluster.pids:
            procstat.pin(pid, cpus)
    except BaseException:
        cluster.stop()
        raise
    return cluster


async def run(a: argparse.Namespace, doc: dict[str, object], before: Path | None) -> None:
    redis = start_redis(a.redis, a.all_cpus)
    if isinstance(redis, redisproc.RedisProc):
        log(f"redis-server pid {redis.pid} on {redis.url}")
    if isinstance(redis, ClusterStore):
        log(f"Redis Cluster pids {redis.pids} on {redis.url}")
        doc["redis_layout"] = [
            {"address": h.address, "role": h.role, "partitions": list(h.partitions),
             "control": h.control}
            for h in redis.layout
        ]  # fmt: skip
    steps: list[dict[str, object]] = []
    doc["steps"] = steps
    try:
        for i, (n, arm) in enumerate(plan(a.node_counts, before is not None)):
            code = before if arm == "before" and before is not None else REPO_ROOT
            tag = f"{i + 1}-{arm}-{n}"
            try:
                async with asyncio.timeout(a.timeout):
                    result = await step(a, n, arm, code, redis, tag)
            except Exception as exc:  # one failed step must not lose the others
                log(f"{tag} failed: {exc!r}")
                result = {"nodes": n, "arm": arm, "failed": repr(exc)}
            steps.append(result)
    finally:
        redis.stop()


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    runner.raise_fd_limit()
    a.client_cpu_list = procstat.parse_cpus(a.client_cpus)
    a.all_cpus = sorted(os.sched_getaffinity(0))
    runner.pin_self(a.client_cpu_list)
    a.json_path = a.json or runner.RESULTS / f"scaleout-{runner.stamp()}.json"
    hidden = ("json_path", "client_cpu_list", "all_cpus")
    params = {k: v for k, v in vars(a).items() if k not in hidden}
    doc = runner.header("scaleout", a.label, params)
    with tempfile.TemporaryDirectory(prefix="pushsvc-before-") as tmp:
        before = None
        if a.before:
            doc["before_commit"] = export(a.before, Path(tmp))
            before = Path(tmp)
        asyncio.run(run(a, doc, before))
    steps = doc["steps"]
    assert isinstance(steps, list)
    cpus = f"nodes not pinned; load workers and the publisher on CPUs {a.client_cpus}"
    notes = [
        f"{cpus}; redis-server on any CPU",
        "received share: 1.00 when every node gets every message; 1/N for routing by stream",
    ]
    if a.redis == "cluster":
        notes.append(
            "Redis Cluster, 3 masters with a replica each: Redis commands and CPU are the "
            "masters' sums; a master's share is of the masters' commands or CPU, beside its "
            f"share of the {PARTITIONS} partitions (control: the slot of the keys outside them, "
            "which held every key before the partitions)"
        )
    notes += [
        f"{s['nodes']} nodes {s['arm']}: failed: {s['failed']}" for s in steps if "failed" in s
    ]
    notes += [
        f"{s['nodes']} nodes {s['arm']}: other processes used more than "
        f"{DISTURBED_SHARE:.0%} of a CPU while publishing"
        for s in steps
        if s.get("disturbed")
    ]
    notes += [
        f"{s['nodes']} nodes {s['arm']}: the publisher fell behind "
        f"({runner.num(s['publish_seconds']):.1f} s for {a.duration:g} s of messages)"
        for s in steps
        if runner.num(s.get("publish_seconds")) > 1.05 * a.duration
    ]
    rows = [table_row(s) for s in steps if "failed" not in s]
    doc["table"] = [dict(zip(COLUMNS, r, strict=True)) for r in rows]
    spread = [r for s in steps if "failed" not in s for r in server_rows(s)]
    if a.redis == "cluster":
        doc["redis_table"] = [dict(zip(SERVER_COLUMNS, r, strict=True)) for r in spread]
    doc["notes"] = notes
    doc["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    write_json(a.json_path, doc)
    before_txt = f" · before = {str(doc['before_commit'])[:7]}" if a.before else ""
    title = (
        f"pushsvc user-targeted cost vs nodes · {a.users_per_node} users/node · "
        f"{a.rate:g}/s for {a.duration:g} s{before_txt}"
    )
    print_rows(title, COLUMNS, rows)
    if a.redis == "cluster":
        print_rows("Redis Cluster: each master per message", SERVER_COLUMNS, spread)
    for note in notes:
        print(f"note: {note}")
    print(f"JSON: {a.json_path}")
    return 1 if any("failed" in s for s in steps) else 0


def print_rows(title: str, columns: tuple[str, ...], rows: list[list[str]]) -> None:
    table = Table(title=title, title_justify="left")
    for i, name in enumerate(columns):
        table.add_column(name, justify="left" if i < 2 else "right")
    for row in rows:
        table.add_row(*row)
    Console(width=200).print(table)


if __name__ == "__main__":
    sys.exit(main())
