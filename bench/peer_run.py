"""One system of ``bench.peer``: two nodes on one Redis, driven by the same load clients.

:class:`System` says how to start a node and what to publish to it; :func:`measure` starts
redis-server and the two nodes, ramps the clients (half on each node), times broadcasts and
user-targeted messages published on node 1, stops everything it started and returns the figures
as a JSON-ready dict. Latency runs from ``time.time_ns()`` just before a publish request is written
to the arrival of the frame at a client, as its event loop hands over the bytes (one clock).
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import random
import secrets
import time
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import procstat, redisproc, runner, server, stats
from bench.api import ApiClient
from bench.common import (
    BROADCAST_EVENT,
    USER_EVENT,
    BroadcastArrivals,
    Close,
    CollectBroadcast,
    GetStatus,
    Ramp,
    Ramped,
    Setup,
    Status,
    clients_at_end,
    user_id,
)
from bench.node import DISTURBED_SHARE
from bench.phases import PublishTally, collect_user, paced, split
from bench.report import log
from bench.workers import REPO_ROOT, WorkerGroup

SOCKETIO_DIR = REPO_ROOT / "bench" / "peer_socketio"
SIO_PATH = "/socket.io/?EIO=4&transport=websocket"


@dataclass(frozen=True)
class System:
    """A system under test: its node command, its clients' protocol and its publish API."""

    name: str
    title: str
    adapter: str | None
    """Socket.IO's adapter (``redis`` or ``sharded``); ``None`` for pushsvc."""

    @property
    def protocol(self) -> str:
        return "pushsvc" if self.adapter is None else "socketio"

    def command(self, redis_url: str) -> str:
        if self.adapter is None:
            return server.DEFAULT_CMD
        js = SOCKETIO_DIR / "server.js"
        return (
            f"node {js} --port {{port}} --http-port {{internal_port}} "
            f"--redis {redis_url} --adapter {self.adapter}"
        )

    def client_url(self, started: server.StartedServer) -> str:
        if self.adapter is None:
            return started.client_url
        return started.client_url.removesuffix("/ws") + SIO_PATH

    def publish(
        self, to: str | None, event: str, seq: int, run: str, ack: bool = True
    ) -> tuple[str, object]:
        """Path and body of a publish to user ``to`` (``None``: to everyone).

        ``ack`` is pushsvc's: a user-targeted message asks for acks unless it is false (Socket.IO
        has no such thing)."""
        data = {"seq": seq, "run": run}
        if self.adapter is None:
            target: dict[str, object] = {"all": True} if to is None else {"users": [to]}
            body: dict[str, object] = {"to": target, "event": event, "data": data}
            if to is not None and not ack:
                body["ack"] = False
            return "/v1/messages", body
        # The event's argument has the fields of a pushsvc msg frame, so the clients count both
        # the same way (bench.sioconn).
        msg = {"type": "msg", "event": event, "id": f"{event}-{seq}", "data": data}
        return "/publish", ({"all": True, "data": msg} if to is None else {"user": to, "data": msg})


@dataclass(frozen=True)
class Plan:
    """What to measure, the same for every system."""

    connections: int
    client_procs: int
    concurrency: int
    broadcasts: int
    max_broadcasts: int
    broadcast_interval: float
    collect_timeout: float
    rate: float
    duration: float
    drain: float
    settle: float
    node_cpus: list[list[int]]
    client_cpus: list[int]
    seed: int
    timeout: float
    log_dir: Path
    pushsvc_ack: bool = True
    api_in_flight: int = 256


class Cluster:
    """redis-server and two nodes of ``system``, started on free ports; :meth:`stop` ends them."""

    def __init__(self, system: System, plan: Plan) -> None:
        self.system = system
        self.api_key = secrets.token_urlsafe(24)
        self.secret = secrets.token_urlsafe(32)
        self.redis = redisproc.start()
        self.nodes: list[server.StartedServer] = []
        try:
            for i, cpus in enumerate(plan.node_cpus):
                env = {
                    "PUSHSVC_API_KEYS": self.api_key,
                    "PUSHSVC_TOKEN_SECRET": self.secret,
                    "PUSHSVC_HEARTBEAT": "3600",
                    "PUSHSVC_REDIS_URL": self.redis.url,
                    "PUSHSVC_NODE_ID": f"peer-{i + 1}",
                }
                log_path = plan.log_dir / f"{system.name}.node-{i + 1}.log"
                cmd = system.command(self.redis.url)
                self.nodes.append(server.start(cmd, env, cpus, log_path, []))
        except BaseException:
            self.stop()
            raise

    def pids(self) -> list[int]:
        roots = [n.pid for n in self.nodes if procstat.alive(n.pid)]
        return sorted({*roots, *(c for r in roots for c in procstat.descendants(r))})

    def stop(self) -> None:
        for node in self.nodes:
            node.stop(15.0)
        self.redis.stop()


def setups(system: System, cluster: Cluster, plan: Plan, run: str, prefix: str) -> list[Setup]:
    base = ipaddress.IPv4Address("127.0.0.2")
    urls = [system.client_url(n) for n in cluster.nodes]
    return [
        Setup(
            worker=i,
            run=run,
            url=urls[i % len(urls)],
            source_ip=str(base + i),
            first=first,
            count=count,
            concurrency=plan.concurrency,
            connect_timeout=60.0,
            deadline=plan.timeout + 60,
            cpus=plan.client_cpus,
            user_prefix=prefix,
            device_prefix="peer-",
            token_ttl=7200,
            topics=[],
            token_secret=cluster.secret if system.adapter is None else None,
            protocol=system.protocol,
        )
        for i, (first, count) in enumerate(split(plan.connections, plan.client_procs))
    ]


async def measure(system: System, plan: Plan) -> dict[str, object]:
    """Start ``system``'s cluster, measure it, stop it; the figures as a JSON-ready dict."""
    cluster = Cluster(system, plan)
    out: dict[str, object] = {"system": system.name, "title": system.title}
    try:
        async with asyncio.timeout(plan.timeout):
            for node in cluster.nodes:
                await server.wait_ready(node, 60.0)
            out["nodes"] = [{"pid": n.pid, "command": n.command} for n in cluster.nodes]
            out["redis_pid"] = cluster.redis.pid
            log(f"{system.name}: nodes {[n.pid for n in cluster.nodes]}, {cluster.redis.url}")
            await _drive(system, cluster, plan, out)
    except TimeoutError:
        out["error"] = f"stopped by the timeout of {plan.timeout:g} s"
    except Exception as exc:
        out["error"] = repr(exc)
        log(f"{system.name} failed: {exc!r}")
    finally:
        cluster.stop()
    return out


async def _drive(system: System, cluster: Cluster, plan: Plan, out: dict[str, object]) -> None:
    run = secrets.token_hex(6)
    prefix = f"{system.name}-{run}-"
    group = await WorkerGroup.start(setups(system, cluster, plan, run, prefix))
    api_url = cluster.nodes[0].internal_urls[0]
    try:
        async with ApiClient(api_url, cluster.api_key, size=plan.api_in_flight) as api:
            connected = await _ramp(cluster, group, plan, out)
            if not connected:
                raise RuntimeError("no connection was opened")
            await _broadcasts(system, cluster, group, api, plan, run, out)
            users = [user_id(prefix, i) for i in connected]
            await _users(system, cluster, group, api, plan, run, users, out)
        out["clients"] = clients_at_end(await group.call(GetStatus(), Status))
        await group.call(Close(timeout=10.0), Status)
    finally:
        await group.stop(15.0)


async def _ramp(
    cluster: Cluster, group: WorkerGroup, plan: Plan, out: dict[str, object]
) -> list[int]:
    await asyncio.sleep(plan.settle)
    before = procstat.sample(cluster.pids())
    log(f"ramping {plan.connections} connections over {len(group.workers)} processes")
    window = procstat.Window(cluster.pids(), group.pids, [cluster.redis.pid])
    t0 = time.perf_counter()
    ramped = await group.call(Ramp(), Ramped)
    wall = time.perf_counter() - t0
    cpu = window.close()
    await asyncio.sleep(plan.settle)
    after = procstat.sample(cluster.pids())
    ok = sum(r.ok for r in ramped)
    errors: Counter[str] = Counter()
    for r in ramped:
        errors.update(r.errors)
    per = max(ok, 1)
    out["ramp"] = {
        "requested": plan.connections,
        "ok": ok,
        "failed": sum(r.failed for r in ramped),
        "errors": dict(errors),
        "seconds": wall,
        "connect_to_open_ms": stats.summary(t / 1e6 for r in ramped for t in r.handshake_ns),
        "rss_before_kib": before.rss_kib,
        "rss_after_kib": after.rss_kib,
        "rss_per_connection_kib": (after.rss_kib - before.rss_kib) / per,
        "cpu_per_handshake_us": (after.cpu_seconds - before.cpu_seconds) / per * 1e6,
        "cpu": cpu,
    }
    log(f"ramp: {ok} open in {wall:.1f} s, errors {dict(errors)}")
    return sorted(i for r in ramped for i in r.connected)


async def _broadcasts(
    system: System,
    cluster: Cluster,
    group: WorkerGroup,
    api: ApiClient,
    plan: Plan,
    run: str,
    out: dict[str, object],
) -> None:
    runs: list[dict[str, object]] = []
    seq = 0
    while (
        seq < plan.max_broadcasts
        and sum(r.get("disturbed") is False for r in runs) < plan.broadcasts
    ):
        seq += 1
        window = procstat.Window(cluster.pids(), group.pids, [cluster.redis.pid])
        path, body = system.publish(None, BROADCAST_EVENT, seq, run)
        resp = await api.post_json(path, body)
        if resp.status != 202:
            runs.append({"seq": seq, "error": f"HTTP {resp.status} {resp.body[:200]!r}"})
            continue
        got = await group.call(
            CollectBroadcast(seq=seq, timeout=plan.collect_timeout), BroadcastArrivals
        )
        cpu = window.close()
        other, seconds = runner.num(cpu["other_cpu_seconds"]), runner.num(cpu["seconds"])
        lat = sorted((t - resp.sent_ns) / 1e6 for r in got for t in r.arrivals)
        one = {
            "seq": seq,
            "received": len(lat),
            "missing": sum(r.missing for r in got),
            "duplicates": sum(r.duplicates for r in got),
            "p50_ms": stats.quantile(lat, 0.5),
            "last_ms": lat[-1] if lat else math.nan,
            "publish_http_ms": resp.elapsed_ns / 1e6,
            "cpu": cpu,
            "disturbed": other > DISTURBED_SHARE * seconds,
        }
        runs.append(one)
        log(
            f"broadcast {seq}: last {one['last_ms']:.1f} ms, p50 {one['p50_ms']:.1f} ms, "
            f"{one['received']} received, {one['missing']} missing, {one['duplicates']} dup"
            + (
                f" (disturbed: others used {other:.2f} CPU-s in {seconds:.2f} s)"
                if one["disturbed"]
                else ""
            )
        )
        await asyncio.sleep(plan.broadcast_interval)
    good = [r for r in runs if "error" not in r]
    quiet = [r for r in good if r["disturbed"] is False]
    counted = quiet or good
    lasts = [float(str(r["last_ms"])) for r in counted]
    out["broadcast"] = {
        "runs": runs,
        "last_ms_median": stats.median(lasts),
        "last_ms_min": min(lasts, default=math.nan),
        "last_ms_max": max(lasts, default=math.nan),
        "counted": f"{len(counted)} undisturbed" if quiet else f"{len(counted)}, all disturbed",
        "p50_ms_median": stats.median([float(str(r["p50_ms"])) for r in counted]),
        "missing_total": sum(int(str(r["missing"])) for r in good),
        "duplicates_total": sum(int(str(r["duplicates"])) for r in good),
        "failed_publishes": len(runs) - len(good),
    }


async def _users(
    system: System,
    cluster: Cluster,
    group: WorkerGroup,
    api: ApiClient,
    plan: Plan,
    run: str,
    users: list[str],
    out: dict[str, object],
) -> None:
    total = int(plan.rate * plan.duration)
    if total <= 0:
        return
    rng = random.Random(plan.seed)
    tally = PublishTally()
    sent, http_ms, errors = tally.sent, tally.http_ms, tally.errors

    def one(seq: int) -> Coroutine[Any, Any, None]:
        path, body = system.publish(rng.choice(users), USER_EVENT, seq, run, plan.pushsvc_ack)
        return tally.post(api, path, body, seq)

    log(f"user-targeted: {total} messages at {plan.rate:g}/s")
    window = procstat.Window(cluster.pids(), group.pids, [cluster.redis.pid])
    per_node = [procstat.sample([n.pid]).cpu_seconds for n in cluster.nodes]
    publish_seconds = await paced(total, plan.rate, one)
    cpu = window.close()
    cpu["per_node_cpu_seconds"] = [
        procstat.sample([n.pid]).cpu_seconds - t0
        for n, t0 in zip(cluster.nodes, per_node, strict=True)
    ]
    arrivals: dict[int, int] = {}
    dups, acks = await collect_user(group, sent, arrivals, time.monotonic() + plan.drain)
    lat = [(arrivals[s] - t0) / 1e6 for s, t0 in sent.items() if s in arrivals]
    summary = stats.summary(lat)
    out["user"] = {
        "requested": total,
        "rate_per_second": plan.rate,
        "publish_seconds": publish_seconds,
        "accepted": len(sent),
        "errors": dict(errors),
        "received": len(lat),
        "missing": sum(1 for s in sent if s not in arrivals),
        "duplicates": dups,
        "acks_sent": acks,
        "latency_ms": summary,
        "publish_http_ms": stats.summary(http_ms),
        "cpu": cpu,
    }
    log(
        f"user-targeted: p50 {summary.get('p50', math.nan):.1f} ms, "
        f"p99 {summary.get('p99', math.nan):.1f} ms, max {summary.get('max', math.nan):.1f} ms"
    )
