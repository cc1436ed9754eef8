"""Cluster broadcast: 100,000 connections over ``pushsvc serve --workers 6`` on one Redis.

Run from the repository root::

    python -m bench.cluster                      # 100,000 connections, 6 workers, 6 client procs
    python -m bench.cluster -n 20000 --workers 2 --client-procs 2

It starts a ``redis-server`` of its own on a free port, then runs ``bench.fanout`` with
``--start-server --server-workers K --server-arg --redis-url …``: the K workers share the client
port (SO_REUSEPORT), the clients run in ``--client-procs`` processes on 127.0.0.2, .3, …, and every
broadcast is published on worker 0's internal API, so it reaches the other workers through Redis.
Server RSS is summed over the supervisor and its workers (``Pss`` beside it, as forked workers
share pages). On a machine with few cores the server workers, the clients and Redis share the same
CPUs (``--cpus``); the table says so.

``--server-cmd`` runs another server the same way (a ``bench.fanout --server-cmd`` template, given
``--workers K --redis-url URL`` too), e.g. the floor, raw uvloop behind the same Redis::

    python -m bench.cluster -n 20000 --workers 2 --client-procs 2 \\
        --server-cmd "{python} -m bench.floor {port} {internal_port}"

The table's title and the JSON (``server``) say which server ran.

Prints a table and writes ``bench/results/cluster-<UTC time>.json`` (the fan-out run's own JSON is
next to it).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from bench import procstat, redisproc, runner, server
from bench.report import Row, finish, log, print_table, rows_json, write_json
from bench.targets import (
    BASELINE_CLUSTER_BROADCAST,
    BASELINE_CLUSTER_RSS,
    TARGET_CLUSTER_BROADCAST_MS,
    TARGET_CLUSTER_RSS_GB,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.cluster",
        description="N connections over K workers on one Redis; broadcasts through Redis.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("-n", "--connections", type=int, default=100_000)
    p.add_argument("--workers", type=int, default=6, help="the server's --workers")
    p.add_argument("--client-procs", type=int, default=6, help="load processes (127.0.0.2, …)")
    p.add_argument("--cpus", default="0-1", help="CPUs of the server workers, clients and Redis")
    p.add_argument("--broadcasts", type=int, default=3, help="undisturbed broadcasts to time")
    p.add_argument(
        "--concurrency",
        type=int,
        default=40,
        help="handshakes in flight per client process",
    )
    p.add_argument("--collect-timeout", type=float, default=30.0, help="seconds per broadcast")
    p.add_argument(
        "--server-cmd",
        default=server.DEFAULT_CMD,
        help="server command template, as bench.fanout's (default: pushsvc; the floor: "
        '"{python} -m bench.floor {port} {internal_port}")',
    )
    p.add_argument("--server-code", type=Path, help="import the server from this source copy")
    p.add_argument("--timeout", type=float, default=1500.0, help="global limit, seconds")
    p.add_argument("--label", default="")
    p.add_argument("--json", type=Path, help="default bench/results/cluster-<time>.json")
    p.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    runner.raise_fd_limit()
    cpus = procstat.parse_cpus(a.cpus)
    json_path = a.json or runner.RESULTS / f"cluster-{runner.stamp()}.json"
    doc = runner.header("cluster", a.label, vars(a))
    name = server_name(a.server_cmd)
    doc["server"] = {"name": name, "command": a.server_cmd}
    redis = redisproc.start(cpus)
    log(f"redis-server pid {redis.pid} on {redis.url}")
    try:
        args = [
            "--start-server", "-n", str(a.connections),
            "--server-cmd", a.server_cmd,
            "--server-workers", str(a.workers),
            "--server-arg=--redis-url", f"--server-arg={redis.url}",
            "--server-cpus", a.cpus, "--client-cpus", a.cpus,
            "--client-procs", str(a.client_procs),
            "--concurrency", str(a.concurrency),
            "--connect-timeout", "120",
            "--helper-pid", str(redis.pid),
            "--broadcasts", str(a.broadcasts),
            "--broadcast-interval", "3",
            "--collect-timeout", str(a.collect_timeout),
            "--settle", "3",
            "--user-duration", "0",
            "--timeout", str(a.timeout),
            "--label", f"cluster {name} {a.label}".strip(),
        ]  # fmt: skip
        for key, value in runner.code_env(a.server_code).items():
            args += ["--server-env", f"{key}={value}"]
        run = runner.run_fanout(args, json_path.with_suffix(".fanout.json"), a.timeout)
        doc["redis"] = {
            "pid": redis.pid,
            "rss_kib_at_end": procstat.rss_kib(redis.pid) if procstat.alive(redis.pid) else None,
            "cpu_seconds_total": procstat.cpu_seconds(redis.pid)
            if procstat.alive(redis.pid)
            else None,
            "memory": redis.info("memory").get("used_memory_human"),
        }
    finally:
        redis.stop()
    doc["fanout"] = str(json_path.with_suffix(".fanout.json"))
    rows, notes = table(run, a, doc)
    doc["table"] = rows_json(rows)
    doc["notes"] = notes
    write_json(json_path, doc)
    print_table(f"{name} cluster broadcast · N={a.connections:,} · {a.workers} workers", rows)
    missed = finish(rows, notes, json_path, check=a.check)
    return missed or (0 if run.get("exit_status") == 0 else 2)


def server_name(template: str) -> str:
    """What ran, for titles: ``pushsvc`` (the default command), ``floor``, or the template."""
    if template == server.DEFAULT_CMD:
        return "pushsvc"
    if "bench.floor" in template:
        return "floor"
    return template


def table(run: dict[str, object], a: argparse.Namespace, doc: dict[str, object]) -> tuple[
    list[Row], list[str]
]:  # fmt: skip
    d = runner.dig
    n = runner.num
    ok = n(d(run, "ramp", "ok"))
    seconds = n(d(run, "ramp", "seconds"))
    rss_kib = n(d(run, "memory", "rss_after_kib"))
    pss_kib = n(d(run, "memory", "pss_after_kib"))
    rss_gb = rss_kib * 1024 / 1e9
    med = n(d(run, "broadcast", "last_ms_median"))
    lo = n(d(run, "broadcast", "last_ms_min"))
    hi = n(d(run, "broadcast", "last_ms_max"))
    p50 = n(d(run, "broadcast", "p50_ms_median"))
    missing = n(d(run, "broadcast", "missing_total"))
    dups = n(d(run, "broadcast", "duplicates_total"))
    runs = d(run, "broadcast", "runs")
    counted = d(run, "broadcast", "counted")
    redis_cpu = [
        n(d(r, "cpu", "helper_cpu_seconds")) for r in (runs if isinstance(runs, list) else [])
    ]
    gc_ms = n(d(run, "gc", "max_seconds")) * 1e3
    redis = doc.get("redis")
    redis_rss = n(d(redis, "rss_kib_at_end")) / 1024
    rows = [
        Row(
            "connections open / requested",
            f"{ok:,.0f} / {a.connections:,}",
            met=ok == a.connections,
        ),
        Row("ramp time", f"{seconds:.1f} s ({ok / seconds if seconds else 0:,.0f}/s)"),
        Row(
            f"server RSS total after ramp ({a.workers} workers + supervisor)",
            f"{rss_gb:.2f} GB ({rss_kib / 1024:,.0f} MiB; PSS {pss_kib / 1024:,.0f} MiB)",
            f"≤ {TARGET_CLUSTER_RSS_GB:g} GB",
            BASELINE_CLUSTER_RSS,
            rss_gb <= TARGET_CLUSTER_RSS_GB,
        ),
        Row(
            "server RSS per connection",
            f"{n(d(run, 'memory', 'rss_per_connection_kib')):.2f} KiB",
        ),
        Row("server CPU per handshake", f"{n(d(run, 'cpu', 'per_handshake_us')):.0f} µs"),
        Row(
            f"broadcast publish → last client (median of {counted})",
            f"{med:,.0f} ms",
            f"≤ {TARGET_CLUSTER_BROADCAST_MS:,.0f} ms",
            BASELINE_CLUSTER_BROADCAST,
            med <= TARGET_CLUSTER_BROADCAST_MS,
        ),
        Row("broadcast publish → last client (range)", f"min {lo:,.0f} · max {hi:,.0f} ms"),
        Row("broadcast publish → median client", f"{p50:,.0f} ms"),
        Row(
            "broadcast delivered exactly once",
            f"{missing:.0f} missing · {dups:.0f} duplicates",
            "0 · 0",
            met=missing == 0 and dups == 0,
        ),
        Row(
            "redis-server CPU per broadcast (median) · RSS at end",
            f"{_median(redis_cpu) * 1e3:.0f} ms · {redis_rss:.0f} MiB",
        ),
        Row(
            "worst GC pause (any worker)",
            "n/a (the server exports no GC gauge)" if math.isnan(gc_ms) else f"{gc_ms:.1f} ms",
        ),
    ]
    raw = d(run, "notes")
    notes = [x for x in raw if isinstance(x, str)] if isinstance(raw, list) else []
    notes.append(
        f"server workers, {a.client_procs} client processes, the publisher and redis-server all "
        f"share CPUs {a.cpus}: latency and ramp time include the clients' own work"
    )
    return rows, notes


def _median(values: list[float]) -> float:
    s = sorted(v for v in values if not math.isnan(v))
    if not s:
        return math.nan
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


if __name__ == "__main__":
    sys.exit(main())
