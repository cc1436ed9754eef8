"""Fan-out benchmark: N WebSocket clients on one node (or several), then broadcasts and
user-targeted messages.

Run from the repository root::

    python -m bench.fanout --start-server -n 19000
    python -m bench.fanout -n 2000 --client-url ws://127.0.0.1:8080/ws \\
        --internal-url http://127.0.0.1:8081 --api-key KEY --token-secret SECRET --server-pid PID

It reports server RSS per connection, server CPU per handshake, publish → last client latency of a
broadcast, publish → client latency of user-targeted messages and the worst GC pause, as a table
on stdout and as JSON (``bench/results/fanout-<UTC time>.json`` unless ``--json`` says otherwise).

Method. Clients run in ``--client-procs`` worker processes (``bench.wsload``) pinned to
``--client-cpus``, each binding its connections to its own source address (127.0.0.2, .3, …).
Server memory is ``VmRSS`` (summed over the server PIDs and their children) after the ramp minus
before, one settle period after each; CPU is the server's utime+stime over the ramp and the settle
after it. Each divided by the connections that got ``welcome``. Broadcast latency runs from
``time.time_ns()`` just before the publish request is written to the arrival of the frame at each
client, as the client's event loop hands over the bytes (same machine clock). The worst GC pause is
the node's own ``pushsvc_gc_pause_max_seconds`` gauge.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import math
import os
import random
import resource
import secrets
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bench import procstat, server, stats
from bench.api import ApiClient
from bench.common import (
    BROADCAST_EVENT,
    USER_EVENT,
    BroadcastArrivals,
    Close,
    CollectBroadcast,
    CollectUser,
    GetStatus,
    Ramp,
    Ramped,
    Setup,
    Status,
    UserArrivals,
    user_id,
)
from bench.profile import Profile
from bench.report import Row, print_table, rows_json, write_json
from bench.workers import REPO_ROOT, WorkerGroup

TARGET_RSS_KIB = 20.0
TARGET_BROADCAST_MS = 150.0
TARGET_HANDSHAKE_US = 300.0
TARGET_GC_MS = 100.0

BASELINE_RSS = "Socket.IO 13-19 · FastAPI 30 · bare ASGI 19 · raw uvloop floor 1.3"
BASELINE_BROADCAST = "Socket.IO 252 · FastAPI 238 · raw uvloop floor 150"
BASELINE_HANDSHAKE = "Socket.IO 190-265 · FastAPI 554 · bare ASGI 296"

CLIENT_BOUND_SHARE = 0.85
CLIENT_BOUND_MIN_MS = 20.0
DISTURBED_SHARE = 0.10
QUIET_PROBE_S = 0.3


@dataclass(frozen=True)
class Options:
    connections: int
    start_server: bool
    server_cmd: str
    server_args: list[str]
    server_workers: int
    server_env: dict[str, str]
    client_urls: list[str]
    internal_urls: list[str]
    api_key: str | None
    token_secret: str | None
    server_pids: list[int]
    include_children: bool
    pin_server: bool
    server_cpus: list[int]
    client_cpus: list[int]
    heartbeat: float
    client_procs: int
    source_base: str
    concurrency: int
    connect_timeout: float
    token_ttl: int
    user_prefix: str
    settle: float
    broadcasts: int
    broadcast_interval: float
    collect_timeout: float
    user_rate: float
    user_duration: float
    user_drain: float
    timeout: float
    seed: int
    json_path: Path
    label: str
    check: bool
    profile: str
    quiet_wait: float
    profile_format: str


def parse_args(argv: list[str] | None = None) -> Options:
    p = argparse.ArgumentParser(
        prog="python -m bench.fanout",
        description="Connections, broadcast and user-targeted fan-out against a pushsvc node.",
    )
    p.add_argument("-n", "--connections", type=int, default=2000)
    g = p.add_argument_group("server under test")
    g.add_argument("--start-server", action="store_true", help="start a node on free ports")
    g.add_argument(
        "--server-cmd",
        default=server.DEFAULT_CMD,
        help="command template for --start-server; {pushsvc} {python} {port} {internal_port}",
    )
    g.add_argument("--server-arg", action="append", default=[], help="extra server argument")
    g.add_argument(
        "--server-workers",
        type=int,
        default=1,
        help="with --start-server: pass --workers K; worker i's internal port is the base + i",
    )
    g.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE")
    g.add_argument("--client-url", action="append", default=[], help="ws://host:port/ws (repeat)")
    g.add_argument("--internal-url", action="append", default=[], help="http://host:port (repeat)")
    g.add_argument("--api-key", help="internal API key (generated with --start-server)")
    g.add_argument(
        "--token-secret",
        help="PUSHSVC_TOKEN_SECRET, to mint client tokens locally (else via POST /v1/tokens)",
    )
    g.add_argument("--server-pid", action="append", type=int, default=[], help="(repeat)")
    g.add_argument(
        "--no-children",
        action="store_true",
        help="measure only the given PIDs, not their child processes",
    )
    g.add_argument("--pin-server", action="store_true", help="pin --server-pid to --server-cpus")
    g.add_argument("--server-cpus", default="0")
    g.add_argument("--client-cpus", default="1")
    g.add_argument("--heartbeat", type=float, default=3600.0, help="PUSHSVC_HEARTBEAT if started")
    c = p.add_argument_group("clients")
    c.add_argument("--client-procs", type=int, default=0, help="default: one per 5,000 conns")
    c.add_argument("--source-base", default="127.0.0.2", help="first client source address")
    c.add_argument("--concurrency", type=int, default=200, help="handshakes in flight per process")
    c.add_argument("--connect-timeout", type=float, default=30.0)
    c.add_argument("--token-ttl", type=int, default=7200)
    c.add_argument("--user-prefix", default="u", help="connection i is user <prefix><i>")
    m = p.add_argument_group("measurement")
    m.add_argument("--settle", type=float, default=1.0, help="seconds before each RSS reading")
    m.add_argument("--broadcasts", type=int, default=5)
    m.add_argument("--broadcast-interval", type=float, default=1.0)
    m.add_argument("--collect-timeout", type=float, default=10.0)
    m.add_argument(
        "--quiet-wait",
        type=float,
        default=10.0,
        help="before each broadcast, wait up to this many seconds for other processes on the "
        "machine to go quiet (0: don't)",
    )
    m.add_argument("--user-rate", type=float, default=200.0, help="user messages per second")
    m.add_argument("--user-duration", type=float, default=10.0, help="seconds (0 to skip)")
    m.add_argument("--user-drain", type=float, default=15.0, help="seconds to wait for stragglers")
    m.add_argument("--timeout", type=float, default=900.0, help="global limit, seconds")
    m.add_argument("--seed", type=int, default=1)
    m.add_argument("--json", type=Path, help="result file (default bench/results/fanout-*.json)")
    m.add_argument("--label", default="", help="free text stored in the JSON")
    m.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    m.add_argument(
        "--profile",
        choices=["none", "ramp", "broadcast", "user"],
        default="none",
        help="record a py-spy profile of the server during one phase",
    )
    m.add_argument(
        "--profile-format",
        choices=["flamegraph", "speedscope", "raw"],
        default="flamegraph",
        help="py-spy output: flame graph SVG, speedscope JSON, or collapsed stacks text",
    )
    a = p.parse_args(argv)

    if not a.start_server and not (a.client_url and a.internal_url):
        p.error("give --start-server, or --client-url and --internal-url of a running node")
    env: dict[str, str] = {}
    for item in a.server_env:
        key, sep, value = item.partition("=")
        if not sep:
            p.error(f"--server-env wants KEY=VALUE, got {item!r}")
        env[key] = value
    n = a.connections
    if n < 1:
        p.error("--connections must be positive")
    procs = a.client_procs or max(1, math.ceil(n / 5000))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    json_path = a.json or REPO_ROOT / "bench" / "results" / f"fanout-{stamp}.json"
    return Options(
        connections=n,
        start_server=a.start_server,
        server_cmd=a.server_cmd,
        server_args=a.server_arg,
        server_workers=a.server_workers,
        server_env=env,
        client_urls=a.client_url,
        internal_urls=a.internal_url,
        api_key=a.api_key,
        token_secret=a.token_secret,
        server_pids=a.server_pid,
        include_children=not a.no_children,
        pin_server=a.pin_server,
        server_cpus=procstat.parse_cpus(a.server_cpus),
        client_cpus=procstat.parse_cpus(a.client_cpus),
        heartbeat=a.heartbeat,
        client_procs=min(procs, n),
        source_base=a.source_base,
        concurrency=a.concurrency,
        connect_timeout=a.connect_timeout,
        token_ttl=a.token_ttl,
        user_prefix=a.user_prefix,
        settle=a.settle,
        broadcasts=a.broadcasts,
        broadcast_interval=a.broadcast_interval,
        collect_timeout=a.collect_timeout,
        user_rate=a.user_rate,
        user_duration=a.user_duration,
        user_drain=a.user_drain,
        timeout=a.timeout,
        seed=a.seed,
        json_path=json_path,
        label=a.label,
        check=a.check,
        profile=a.profile,
        quiet_wait=a.quiet_wait,
        profile_format=a.profile_format,
    )


def log(msg: str) -> None:
    print(f"[fanout {datetime.now(UTC):%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Target:
    """What the run talks to, however it was obtained."""

    client_urls: list[str]
    internal_urls: list[str]
    api_key: str | None
    token_secret: str | None
    root_pids: list[int]
    include_children: bool
    started: server.StartedServer | None = None

    def pids(self) -> list[int]:
        pids = [p for p in self.root_pids if procstat.alive(p)]
        if self.include_children:
            for pid in list(pids):
                pids.extend(procstat.descendants(pid))
        return sorted(set(pids))


@dataclass
class Results:
    doc: dict[str, object] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# -- phases -------------------------------------------------------------------------------------


def split(n: int, parts: int) -> list[tuple[int, int]]:
    """``(first, count)`` of each of ``parts`` near-equal slices of ``range(n)``."""
    out = []
    first = 0
    for i in range(parts):
        count = n // parts + (1 if i < n % parts else 0)
        out.append((first, count))
        first += count
    return out


async def mint_over_http(api: ApiClient, opts: Options) -> list[str]:
    log(f"minting {opts.connections} tokens through POST /v1/tokens (give --token-secret: faster)")
    sem = asyncio.Semaphore(16)

    async def one(i: int) -> str:
        async with sem:
            body = {"user": user_id(opts.user_prefix, i), "topics": [], "ttl": opts.token_ttl}
            resp = await api.post_json("/v1/tokens", body)
            if resp.status != 200:
                raise RuntimeError(f"POST /v1/tokens: HTTP {resp.status} {resp.body[:200]!r}")
            token = resp.json()
            assert isinstance(token, dict)
            return str(token["token"])

    return list(await asyncio.gather(*(one(i) for i in range(opts.connections))))


def setups(opts: Options, target: Target, tokens: list[str] | None) -> list[Setup]:
    base = ipaddress.IPv4Address(opts.source_base)
    out = []
    for i, (first, count) in enumerate(split(opts.connections, opts.client_procs)):
        out.append(
            Setup(
                worker=i,
                url=target.client_urls[i % len(target.client_urls)],
                source_ip=str(base + i),
                first=first,
                count=count,
                concurrency=opts.concurrency,
                connect_timeout=opts.connect_timeout,
                deadline=opts.timeout + 60,
                cpus=opts.client_cpus,
                user_prefix=opts.user_prefix,
                device_prefix="bench-",
                token_ttl=opts.token_ttl,
                topics=[],
                token_secret=target.token_secret,
                tokens=tokens[first : first + count] if tokens else [],
            )
        )
    return out


async def scrape(target: Target) -> stats.Samples:
    """Merge ``/metrics`` of every internal URL (values of the same series are listed apart)."""
    merged: stats.Samples = {}
    for url in target.internal_urls:
        try:
            async with ApiClient(url, None, size=1) as api:
                resp = await api.get("/metrics")
        except OSError as exc:
            log(f"GET {url}/metrics failed: {exc}")
            continue
        if resp.status != 200:
            log(f"GET {url}/metrics: HTTP {resp.status}")
            continue
        for name, values in stats.parse_metrics(resp.body.decode()).items():
            merged.setdefault(name, []).extend(values)
    return merged


async def ramp_phase(opts: Options, target: Target, group: WorkerGroup, res: Results) -> list[int]:
    pids = target.pids()
    await asyncio.sleep(opts.settle)
    waited = await wait_quiet(target, group, opts.quiet_wait) if opts.quiet_wait else 0.0
    before = procstat.sample(pids)
    log(f"ramping {opts.connections} connections over {len(group.workers)} processes")
    window = procstat.Window(pids, group.pids)
    t0 = time.perf_counter()
    ramped = await group.call(Ramp(), Ramped)
    wall = time.perf_counter() - t0
    ramp_cpu = window.close()
    at_end = procstat.sample(pids)
    await asyncio.sleep(opts.settle)
    pids = target.pids()
    after = procstat.sample(pids)

    ok = sum(r.ok for r in ramped)
    failed = sum(r.failed for r in ramped)
    errors: Counter[str] = Counter()
    for r in ramped:
        errors.update(r.errors)
    hs_ms = [t / 1e6 for r in ramped for t in r.handshake_ns]
    divisor = max(ok, 1)
    rss_per = (after.rss_kib - before.rss_kib) / divisor
    pss_per = (
        (after.pss_kib - before.pss_kib) / divisor
        if after.pss_kib is not None and before.pss_kib is not None
        else None
    )
    cpu_us = (after.cpu_seconds - before.cpu_seconds) / divisor * 1e6
    cpu_us_at_end = (at_end.cpu_seconds - before.cpu_seconds) / divisor * 1e6
    log(
        f"ramp: {ok} open, {failed} failed in {wall:.1f} s; RSS {rss_per:.1f} KiB/conn, "
        f"CPU {cpu_us:.0f} µs/handshake"
    )
    res.doc["ramp"] = {
        "requested": opts.connections,
        "ok": ok,
        "failed": failed,
        "errors": dict(errors),
        "seconds": wall,
        "per_worker_seconds": [r.seconds for r in ramped],
        "handshakes_per_second": ok / wall if wall else None,
        "connect_to_welcome_ms": stats.summary(hs_ms),
        "cpu": ramp_cpu,
        "waited_for_quiet_s": waited,
    }
    other = ramp_cpu["other_cpu_seconds"]
    if isinstance(other, float) and other > DISTURBED_SHARE * wall:
        res.notes.append(
            f"other processes used {other:.1f} CPU-seconds during the {wall:.1f} s ramp: "
            "handshake CPU and memory are the server's own, the ramp time is not"
        )
    res.doc["memory"] = {
        "server_pids": pids,
        "rss_before_kib": before.rss_kib,
        "rss_after_kib": after.rss_kib,
        "rss_per_connection_kib": rss_per,
        "pss_before_kib": before.pss_kib,
        "pss_after_kib": after.pss_kib,
        "pss_per_connection_kib": pss_per,
    }
    res.doc["cpu"] = {
        "server_cpu_seconds_ramp": after.cpu_seconds - before.cpu_seconds,
        "per_handshake_us": cpu_us,
        "per_handshake_us_at_ramp_end": cpu_us_at_end,
        "clock_ticks_per_second": procstat.CLK_TCK,
    }
    res.rows += [
        Row("connections open / requested", f"{ok:,} / {opts.connections:,}", met=failed == 0),
        Row("ramp time", f"{wall:.1f} s ({ok / wall if wall else 0:,.0f}/s)"),
        Row(
            "server RSS per connection",
            f"{rss_per:.2f} KiB",
            f"≤ {TARGET_RSS_KIB:g} KiB",
            BASELINE_RSS,
            rss_per <= TARGET_RSS_KIB,
        ),
        Row(
            "server CPU per handshake",
            f"{cpu_us:.0f} µs",
            f"≤ {TARGET_HANDSHAKE_US:g} µs",
            BASELINE_HANDSHAKE,
            cpu_us <= TARGET_HANDSHAKE_US,
        ),
        Row("server RSS total after ramp", f"{after.rss_kib / 1024:.1f} MiB"),
    ]
    if failed:
        res.notes.append(f"{failed} connections failed: {dict(errors)}")
    return sorted(i for r in ramped for i in r.connected)


@dataclass
class BroadcastRun:
    """One broadcast: latencies from the publish request to each client, and who used the CPUs."""

    seq: int
    received: int
    missing: int
    duplicates: int
    online_sessions: object
    publish_http_ms: float
    first_ms: float
    p50_ms: float
    p99_ms: float
    last_ms: float
    waited_for_quiet_s: float
    cpu: dict[str, object]

    @property
    def disturbed(self) -> bool:
        """Other processes used more than :data:`DISTURBED_SHARE` of a CPU meanwhile."""
        other = self.cpu.get("other_cpu_seconds")
        window = self.cpu.get("seconds")
        return (
            isinstance(other, float)
            and isinstance(window, float)
            and (other > DISTURBED_SHARE * window)
        )

    @property
    def client_bound(self) -> bool:
        """The load clients were busy for most of the latency window."""
        client = self.cpu.get("client_cpu_seconds")
        return (
            self.last_ms >= CLIENT_BOUND_MIN_MS
            and isinstance(client, float)
            and client * 1e3 >= CLIENT_BOUND_SHARE * self.last_ms
        )


async def wait_quiet(target: Target, group: WorkerGroup, limit_s: float) -> float:
    """Wait (up to ``limit_s``) until other processes use less than :data:`DISTURBED_SHARE`
    of a CPU over a short probe; return the seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < limit_s:
        window = procstat.Window(target.pids(), group.pids)
        await asyncio.sleep(QUIET_PROBE_S)
        other = window.close()["other_cpu_seconds"]
        if isinstance(other, float) and other < DISTURBED_SHARE * QUIET_PROBE_S:
            break
    return time.monotonic() - start


async def broadcast_once(
    seq: int, opts: Options, target: Target, group: WorkerGroup, api: ApiClient
) -> BroadcastRun | str:
    """Publish broadcast ``seq`` and collect its arrivals; a string says why it failed."""
    waited = await wait_quiet(target, group, opts.quiet_wait) if opts.quiet_wait else 0.0
    window = procstat.Window(target.pids(), group.pids)
    body = {"to": {"all": True}, "event": BROADCAST_EVENT, "data": {"seq": seq}}
    resp = await api.post_json("/v1/messages", body)
    if resp.status != 202:
        return f"broadcast {seq}: HTTP {resp.status} {resp.body[:200]!r}"
    got = await group.call(
        CollectBroadcast(seq=seq, timeout=opts.collect_timeout), BroadcastArrivals
    )
    cpu = window.close()
    lat_ms = sorted((t - resp.sent_ns) / 1e6 for r in got for t in r.arrivals)
    answer = resp.json()
    return BroadcastRun(
        seq=seq,
        received=len(lat_ms),
        missing=sum(r.missing for r in got),
        duplicates=sum(r.duplicates for r in got),
        online_sessions=answer.get("online_sessions") if isinstance(answer, dict) else None,
        publish_http_ms=resp.elapsed_ns / 1e6,
        first_ms=lat_ms[0] if lat_ms else math.nan,
        p50_ms=stats.quantile(lat_ms, 0.5),
        p99_ms=stats.quantile(lat_ms, 0.99),
        last_ms=lat_ms[-1] if lat_ms else math.nan,
        waited_for_quiet_s=waited,
        cpu=cpu,
    )


async def broadcast_phase(
    opts: Options, target: Target, group: WorkerGroup, api: ApiClient, res: Results
) -> None:
    runs: list[BroadcastRun] = []
    for seq in range(1, opts.broadcasts + 1):
        run = await broadcast_once(seq, opts, target, group, api)
        if isinstance(run, str):
            res.notes.append(run)
            log(run)
            continue
        runs.append(run)
        cpu = run.cpu
        log(
            f"broadcast {seq}: last {run.last_ms:.1f} ms, p50 {run.p50_ms:.1f} ms, "
            f"{run.received} received, {run.missing} missing, {run.duplicates} duplicates; "
            f"CPU s server {cpu['server_cpu_seconds']:.2f} clients {cpu['client_cpu_seconds']:.2f}"
            f" other {cpu['other_cpu_seconds']:.2f}" + (" (disturbed)" if run.disturbed else "")
        )
        await asyncio.sleep(opts.broadcast_interval)

    lasts = [r.last_ms for r in runs]
    quiet = [r.last_ms for r in runs if not r.disturbed]
    missing = sum(r.missing for r in runs)
    dups = sum(r.duplicates for r in runs)
    med = stats.median(lasts)
    res.doc["broadcast"] = {
        "runs": [
            {**asdict(r), "disturbed": r.disturbed, "client_bound": r.client_bound} for r in runs
        ],
        "last_ms_min": min(lasts, default=math.nan),
        "last_ms_median": med,
        "last_ms_max": max(lasts, default=math.nan),
        "last_ms_median_undisturbed": stats.median(quiet),
        "p50_ms_median": stats.median([r.p50_ms for r in runs]),
        "server_cpu_per_delivery_us_median": stats.median(
            [float(str(r.cpu["server_cpu_seconds"])) * 1e6 / max(r.received, 1) for r in runs]
        ),
        "missing_total": missing,
        "duplicates_total": dups,
    }
    disturbed = sum(r.disturbed for r in runs)
    if disturbed:
        res.notes.append(
            f"{disturbed} of {len(runs)} broadcasts ran while other processes used more than "
            f"{DISTURBED_SHARE:.0%} of a CPU; median of the others: {stats.median(quiet):.1f} ms"
        )
    bound = sum(r.client_bound for r in runs)
    if bound:
        res.notes.append(
            f"{bound} of {len(runs)} broadcasts may be client-bound: the load clients used "
            f"≥ {CLIENT_BOUND_SHARE:.0%} of the latency window in CPU, so those figures are upper "
            "bounds on the server's"
        )
    spread = f"min {min(lasts):.0f} · max {max(lasts):.0f} ms" if lasts else ""
    res.rows += [
        Row(
            f"broadcast publish → last client (median of {len(runs)})",
            f"{med:.1f} ms",
            f"≤ {TARGET_BROADCAST_MS:g} ms",
            BASELINE_BROADCAST,
            med <= TARGET_BROADCAST_MS,
        ),
        Row("broadcast publish → last client (range)", spread),
        Row(
            "broadcast publish → median client", f"{stats.median([r.p50_ms for r in runs]):.1f} ms"
        ),
        Row(
            "broadcast delivered exactly once",
            f"{missing} missing · {dups} duplicates",
            "0 · 0",
            met=missing == 0 and dups == 0,
        ),
    ]


async def user_phase(
    opts: Options,
    target: Target,
    group: WorkerGroup,
    api: ApiClient,
    connected: list[int],
    res: Results,
) -> None:
    total = int(opts.user_rate * opts.user_duration)
    if total <= 0 or not connected:
        return
    rng = random.Random(opts.seed)
    sent: dict[int, int] = {}
    http_ms: list[float] = []
    errors: Counter[str] = Counter()

    async def one(seq: int, user: str) -> None:
        body = {"to": {"users": [user]}, "event": USER_EVENT, "data": {"seq": seq}}
        try:
            resp = await api.post_json("/v1/messages", body)
        except (OSError, asyncio.IncompleteReadError) as exc:
            errors[type(exc).__name__] += 1
            return
        if resp.status == 202:
            sent[seq] = resp.sent_ns
            http_ms.append(resp.elapsed_ns / 1e6)
        else:
            errors[f"HTTP {resp.status}"] += 1

    log(f"user-targeted: {total} messages at {opts.user_rate:g}/s")
    loop = asyncio.get_running_loop()
    window = procstat.Window(target.pids(), group.pids)
    start = loop.time()
    async with asyncio.TaskGroup() as tg:
        for seq in range(total):
            delay = start + seq / opts.user_rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tg.create_task(one(seq, user_id(opts.user_prefix, rng.choice(connected))))
    publish_seconds = loop.time() - start
    publish_cpu = window.close()

    arrivals: dict[int, int] = {}
    dup_ids = 0
    acks = 0
    deadline = time.monotonic() + opts.user_drain
    while True:
        replies = await group.call(CollectUser(), UserArrivals)
        for r in replies:
            for seq, t in r.arrivals:
                arrivals.setdefault(seq, t)
        dup_ids = sum(r.duplicates for r in replies)
        acks = sum(r.acks_sent for r in replies)
        if all(s in arrivals for s in sent) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    lat = [(arrivals[s] - t0) / 1e6 for s, t0 in sent.items() if s in arrivals]
    summary = stats.summary(lat)
    missing = sum(1 for s in sent if s not in arrivals)
    res.doc["user"] = {
        "requested": total,
        "rate_per_second": opts.user_rate,
        "publish_seconds": publish_seconds,
        "cpu_while_publishing": publish_cpu,
        "accepted": len(sent),
        "errors": dict(errors),
        "received": len(lat),
        "missing": missing,
        "duplicates": dup_ids,
        "acks_sent": acks,
        "latency_ms": summary,
        "publish_http_ms": stats.summary(http_ms),
    }
    log(
        f"user-targeted: p50 {summary.get('p50', math.nan):.1f} ms, "
        f"p99 {summary.get('p99', math.nan):.1f} ms, {missing} missing"
    )
    res.rows += [
        Row(
            f"user-targeted publish → client p50 / p99 / max ({opts.user_rate:g}/s)",
            f"{summary.get('p50', math.nan):.1f} / {summary.get('p99', math.nan):.1f} / "
            f"{summary.get('max', math.nan):.1f} ms",
        ),
        Row(
            "user-targeted delivered exactly once",
            f"{missing} missing · {dup_ids} duplicates · {sum(errors.values())} publish errors",
            "0 · 0",
            met=missing == 0 and dup_ids == 0 and not errors,
        ),
    ]


def gc_figures(before: stats.Samples, after: stats.Samples, res: Results) -> None:
    worst = stats.gauge_max(after, "pushsvc_gc_pause_max_seconds")
    hist = "pushsvc_gc_pause_seconds"
    gc = {
        "max_seconds": worst,
        "p50_seconds": stats.histogram_quantile(after, hist, 0.5),
        "p99_seconds": stats.histogram_quantile(after, hist, 0.99),
        "count": stats.metric_total(after, hist + "_count"),
        "count_before_ramp": stats.metric_total(before, hist + "_count"),
        "sum_seconds": stats.metric_total(after, hist + "_sum"),
    }
    res.doc["gc"] = gc
    if worst is None:
        res.rows.append(
            Row("worst GC pause", "n/a (no pushsvc_gc_pause_max_seconds)", f"≤ {TARGET_GC_MS:g} ms")
        )
        res.notes.append("the server exports no pushsvc_gc_pause_max_seconds gauge")
        return
    ms = worst * 1e3
    p99 = gc["p99_seconds"]
    extra = f" (p99 ≈ {p99 * 1e3:.1f} ms, {gc['count']:.0f} collections)" if p99 else ""
    res.rows.append(
        Row(
            "worst GC pause",
            f"{ms:.1f} ms{extra}",
            f"≤ {TARGET_GC_MS:g} ms",
            met=ms <= TARGET_GC_MS,
        )
    )


SERVER_COUNTERS = (
    "pushsvc_connections",
    "pushsvc_connections_opened_total",
    "pushsvc_connections_closed_total",
    "pushsvc_messages_published_total",
    "pushsvc_messages_sent_total",
    "pushsvc_messages_acked_total",
    "pushsvc_redeliveries_total",
    "pushsvc_outbox_overflows_total",
)


def server_view(before: stats.Samples, after: stats.Samples) -> dict[str, object]:
    """The node's own account of the run, for cross-checking the clients' figures."""
    view: dict[str, object] = {}
    for name in SERVER_COUNTERS:
        view[name] = {
            "before": stats.metric_total(before, name),
            "after": stats.metric_total(after, name),
        }
    for hist in ("pushsvc_fanout_duration_seconds", "pushsvc_delivery_latency_seconds"):
        view[hist] = {
            "p50": stats.histogram_quantile(after, hist, 0.5),
            "p99": stats.histogram_quantile(after, hist, 0.99),
            "count": stats.metric_total(after, hist + "_count"),
        }
    return view


# -- the run ------------------------------------------------------------------------------------


class GcTrail:
    """The server's garbage collections per phase, from ``pushsvc_gc_pause_seconds``."""

    HIST = "pushsvc_gc_pause_seconds"

    def __init__(self, start: stats.Samples) -> None:
        self._last = self._read(start)
        self.phases: dict[str, dict[str, object]] = {}

    def _read(self, samples: stats.Samples) -> tuple[dict[str, float], dict[str, float]]:
        return (
            stats.by_label(samples, self.HIST + "_count", "generation"),
            stats.by_label(samples, self.HIST + "_sum", "generation"),
        )

    def record(self, name: str, samples: stats.Samples) -> None:
        counts, sums = self._read(samples)
        prev_counts, prev_sums = self._last
        self._last = (counts, sums)
        self.phases[name] = {
            "max_pause_seconds_so_far": stats.gauge_max(samples, "pushsvc_gc_pause_max_seconds"),
            "generations": {
                gen: {
                    "collections": counts[gen] - prev_counts.get(gen, 0.0),
                    "seconds": sums.get(gen, 0.0) - prev_sums.get(gen, 0.0),
                }
                for gen in sorted(counts)
            },
        }

    def seconds(self, name: str) -> tuple[float, float]:
        """Collections and pause seconds (all generations) during phase ``name``."""
        gens = self.phases.get(name, {}).get("generations", {})
        assert isinstance(gens, dict)
        return (
            sum(float(g["collections"]) for g in gens.values()),
            sum(float(g["seconds"]) for g in gens.values()),
        )


@contextlib.asynccontextmanager
async def phase(
    name: str, opts: Options, target: Target, gc: GcTrail, res: Results
) -> AsyncIterator[None]:
    """Profile phase ``name`` if asked to, and record the server's collections during it."""
    prof = None
    if opts.profile == name:
        ext = {"flamegraph": "svg", "speedscope": "speedscope.json", "raw": "txt"}[
            opts.profile_format
        ]
        out = opts.json_path.with_suffix(f".{name}.{ext}")
        prof = Profile.start(target.pids(), out, opts.profile_format)
        if prof is None:
            res.notes.append("py-spy not found: no profile taken")
        else:
            log(f"profiling the server during {name} with py-spy")
    try:
        yield
    finally:
        if prof is not None:
            path = prof.stop()
            res.doc["profile"] = str(path) if path else None
            log(f"profile: {path or f'none written, see {prof.log}'}")
        gc.record(name, await scrape(target))


async def attach_or_start(opts: Options) -> Target:
    if not opts.start_server:
        if not opts.server_pids:
            log("no --server-pid: memory and CPU figures will be missing")
        if opts.pin_server:
            for pid in opts.server_pids:
                procstat.pin(pid, opts.server_cpus)
        return Target(
            opts.client_urls,
            opts.internal_urls,
            opts.api_key,
            opts.token_secret,
            opts.server_pids,
            opts.include_children,
        )
    secret = opts.token_secret or secrets.token_urlsafe(32)
    api_key = opts.api_key or secrets.token_urlsafe(24)
    env = {
        "PUSHSVC_API_KEYS": api_key,
        "PUSHSVC_TOKEN_SECRET": secret,
        "PUSHSVC_HEARTBEAT": f"{opts.heartbeat:g}",
        **opts.server_env,
    }
    log_path = opts.json_path.with_suffix(".server.log")
    started = server.start(
        opts.server_cmd, env, opts.server_cpus, log_path, opts.server_args, opts.server_workers
    )
    log(f"started server pid {started.pid}: {' '.join(started.command)} (log {log_path})")
    target = Target(
        [started.client_url],
        started.internal_urls,
        api_key,
        secret,
        [started.pid],
        opts.include_children,
        started,
    )
    try:
        ready = await server.wait_ready(started, 60.0)
    except BaseException:
        started.stop()
        raise
    log(f"server ready after {ready:.1f} s")
    return target


async def measure(opts: Options, target: Target, res: Results) -> None:
    if target.internal_urls and not target.api_key:
        log("no --api-key: publishing will probably be refused")
    async with ApiClient(target.internal_urls[0], target.api_key, size=32) as api:
        tokens = None
        if target.token_secret is None:
            tokens = await mint_over_http(api, opts)
        group = await WorkerGroup.start(setups(opts, target, tokens))
        try:
            res.doc["affinity"] = {
                "server": {p: procstat.affinity(p) for p in target.pids()},
                "clients": {p: procstat.affinity(p) for p in group.pids},
                "benchmark": procstat.affinity(os.getpid()),
            }
            overlap = {c for p in target.pids() for c in procstat.affinity(p)} & set(
                opts.client_cpus
            )
            if overlap:
                res.notes.append(f"server and clients share CPUs {sorted(overlap)}")
            metrics_before = await scrape(target)
            gc = GcTrail(metrics_before)
            async with phase("ramp", opts, target, gc, res):
                connected = await ramp_phase(opts, target, group, res)
            if not connected:
                raise RuntimeError("no connection was opened")
            async with phase("broadcast", opts, target, gc, res):
                await broadcast_phase(opts, target, group, api, res)
            async with phase("user", opts, target, gc, res):
                await user_phase(opts, target, group, api, connected, res)
            res.doc["gc_by_phase"] = gc.phases
            collections, seconds = gc.seconds("ramp")
            if collections:
                ok = max(1, len(connected))
                res.rows.append(
                    Row(
                        "server GC during the ramp",
                        f"{collections:.0f} collections, {seconds * 1e3:.0f} ms "
                        f"({seconds * 1e6 / ok:.0f} µs per handshake)",
                    )
                )
            metrics_after = await scrape(target)
            gc_figures(metrics_before, metrics_after, res)
            res.doc["server_metrics"] = server_view(metrics_before, metrics_after)
            status = await group.call(GetStatus(), Status)
            closed: Counter[str] = Counter()
            for s in status:
                closed.update(s.closed)
            res.doc["clients"] = {
                "open_at_end": sum(s.open for s in status),
                "closed_during_run": dict(closed),
                "protocol_errors": sum(s.protocol_errors for s in status),
                "pings_answered": sum(s.pings_answered for s in status),
                "unexpected_frames": sum(s.unexpected_frames for s in status),
            }
            if closed:
                res.notes.append(f"connections closed during the run: {dict(closed)}")
            pids = target.pids()
            if pids:
                res.doc["memory_at_end_kib"] = procstat.sample(pids).rss_kib
            await group.call(Close(timeout=10.0), Status)
        finally:
            await group.stop(15.0)


async def run(opts: Options) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if opts.client_cpus:
        os.sched_setaffinity(0, opts.client_cpus)
    res = Results()
    res.doc.update(
        {
            "benchmark": "fanout",
            "label": opts.label,
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": procstat.machine_info(),
            "parameters": {
                k: (str(v) if isinstance(v, Path) else v)
                for k, v in asdict(opts).items()
                if k not in ("api_key", "token_secret")
            },
        }
    )
    target: Target | None = None
    status = 0
    try:
        async with asyncio.timeout(opts.timeout):
            target = await attach_or_start(opts)
            res.doc["server"] = {
                "command": target.started.command if target.started else None,
                "client_urls": target.client_urls,
                "internal_urls": target.internal_urls,
                "pids": target.pids(),
            }
            await measure(opts, target, res)
    except TimeoutError:
        res.notes.append(f"stopped by the global timeout of {opts.timeout:g} s")
        status = 2
    except Exception as exc:
        res.notes.append(f"failed: {exc!r}")
        log(f"failed: {exc!r}")
        status = 2
    finally:
        if target is not None and target.started is not None:
            code = target.started.stop(15.0)
            log(f"server stopped (exit status {code})")
            res.doc["server_log"] = str(target.started.log_path)
    res.doc["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    res.doc["table"] = rows_json(res.rows)
    res.doc["notes"] = res.notes
    write_json(opts.json_path, res.doc)
    title = (
        f"pushsvc fan-out · N={opts.connections:,} · "
        f"{res.doc['machine']['cpu_model'] if isinstance(res.doc['machine'], dict) else ''}"
    )
    print_table(title, res.rows)
    for note in res.notes:
        print(f"note: {note}")
    print(f"JSON: {opts.json_path}")
    if status == 0 and opts.check and any(r.met is False for r in res.rows):
        status = 1
    return status


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    with contextlib.suppress(ImportError):
        import uvloop  # noqa: PLC0415 (optional speed-up)

        return uvloop.run(run(opts))
    return asyncio.run(run(opts))


if __name__ == "__main__":
    sys.exit(main())
