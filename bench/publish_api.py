"""Publish API throughput of one node: ``POST /v1/messages`` requests/s and ``POST
/v1/messages/batch`` messages/s, with the Redis broker and with the in-memory one.

Run from the repository root::

    python -m bench.publish_api                     # both brokers, single and batch, 10 s each
    python -m bench.publish_api --broker redis --connections 64 --batch-size 1000

For each broker it starts a node of its own (pinned to ``--server-cpus``; with ``redis``, a
``redis-server`` of its own too), then runs ``--load-procs`` load processes (``bench.httpload``,
pinned to ``--client-cpus``) with ``--connections`` keep-alive connections in all, each sending one
request after another for ``--duration`` seconds after a ``--warmup``. Single publishes go to
distinct users (``p0`` … ``p999`` in turn); a batch holds ``--batch-size`` of them. No client is
connected, so this measures the publish path (validation, history append, notification), not the
fan-out. Server and Redis CPU time over the window are in the table.

Prints a table and writes ``bench/results/publish-api-<UTC time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import secrets
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import orjson

from bench import procstat, redisproc, runner, server, stats
from bench.httpload import Done, Job
from bench.node import DISTURBED_SHARE, QUIET_PROBE_S
from bench.phases import split
from bench.report import Row, finish, log, print_table, rows_json, write_json
from bench.targets import TARGET_BATCH_MPS, TARGET_PUBLISH_RPS
from bench.workers import REPO_ROOT


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.publish_api",
        description="POST /v1/messages and /v1/messages/batch throughput of one node.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--broker", action="append", choices=["redis", "memory"], help="default both")
    p.add_argument("--mode", action="append", choices=["single", "batch"], help="default both")
    p.add_argument("--connections", type=int, default=32, help="keep-alive connections in all")
    p.add_argument("--load-procs", type=int, default=1, help="load processes")
    p.add_argument("--batch-size", type=int, default=100, help="messages per batch request")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per mode")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=10.0,
        help="before each measurement, wait up to this many seconds for other processes on the "
        "machine to go quiet (0: don't)",
    )
    p.add_argument("--server-cpus", default="0", help="CPUs of the node")
    p.add_argument("--client-cpus", default="1", help="CPUs of the load processes")
    p.add_argument("--redis-cpus", default="", help="CPUs of redis-server (default: any)")
    p.add_argument("--server-code", type=Path, help="import the server from this source copy")
    p.add_argument("--label", default="")
    p.add_argument("--json", type=Path, help="default bench/results/publish-api-<time>.json")
    p.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    return p.parse_args(argv)


def message(i: int) -> dict[str, object]:
    return {"to": {"users": [f"p{i % 1000}"]}, "event": "bench.api", "data": {"seq": i}}


def bodies(mode: str, batch: int) -> list[str]:
    if mode == "single":
        return [orjson.dumps(message(i)).decode() for i in range(1000)]
    return [
        orjson.dumps({"messages": [message(j * batch + i) for i in range(batch)]}).decode()
        for j in range(20)
    ]


def load(
    a: argparse.Namespace,
    node: server.StartedServer,
    api_key: str,
    mode: str,
    helpers: list[int],
    cpu: dict[str, object],
) -> tuple[list[Done], float]:
    """Run the load processes against ``node``; return their results and the wall time, and put
    the server's and the helpers' CPU seconds over the measured window into ``cpu``."""
    pids = [node.pid]
    url = node.internal_urls[0].removeprefix("http://")
    host, _, port = url.partition(":")
    path = "/v1/messages" if mode == "single" else "/v1/messages/batch"
    procs = []
    for _, count in split(a.connections, a.load_procs):
        job = Job(
            host=host,
            port=int(port),
            path=path,
            api_key=api_key,
            bodies=bodies(mode, a.batch_size),
            connections=count,
            warmup=a.warmup,
            duration=a.duration,
            cpus=procstat.parse_cpus(a.client_cpus),
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.httpload"],
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            preexec_fn=procstat.die_with_parent,  # noqa: PLW1509 (only prctl, no locks taken)
        )
        assert proc.stdin is not None
        proc.stdin.write(msgspec.json.encode(job) + b"\n")
        proc.stdin.close()
        procs.append(proc)
    t0 = time.monotonic()
    # Server (and Redis) CPU over the measured window, as seen from here: the load processes
    # start measuring ``warmup`` s after they start, give or take their start-up.
    time.sleep(a.warmup + 0.3)
    window = procstat.Window(pids, [p.pid for p in procs], helpers)
    time.sleep(max(a.duration - 0.5, 0.5))  # close before the load processes exit
    cpu.update(window.close())
    out = []
    for proc in procs:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        proc.wait(a.warmup + a.duration + 60)
        out.append(msgspec.json.decode(line, type=Done))
    return out, time.monotonic() - t0


def measure(
    a: argparse.Namespace, broker: str, mode: str, node: server.StartedServer, api_key: str,
    redis: redisproc.RedisProc | None,
) -> dict[str, object]:  # fmt: skip
    helpers = [redis.pid] if redis else []
    waited = wait_quiet([node.pid], helpers, a.quiet_wait)
    cpu: dict[str, object] = {}
    done, wall = load(a, node, api_key, mode, helpers, cpu)
    other = runner.num(cpu.get("other_cpu_seconds"))
    disturbed = other > DISTURBED_SHARE * a.duration
    requests = sum(d.requests for d in done)
    ok = sum(d.statuses.get("202", 0) for d in done)
    items = a.batch_size if mode == "batch" else 1
    lat = [v for d in done for v in (d.latency_ms.get("p50"), d.latency_ms.get("p99"))]
    per_proc = [d.latency_ms for d in done]
    result: dict[str, object] = {
        "broker": broker,
        "mode": mode,
        "items_per_request": items,
        "connections": a.connections,
        "requests_in_window": requests,
        "accepted_in_window": ok,
        "statuses": [d.statuses for d in done],
        "errors": [d.errors for d in done],
        "sample_error": next((d.sample_status_body for d in done if d.sample_status_body), ""),
        "requests_per_second": ok / a.duration,
        "messages_per_second": ok * items / a.duration,
        "latency_ms_per_process": per_proc,
        "seconds": a.duration,
        "server_cpu_seconds": cpu["server_cpu_seconds"],
        "redis_cpu_seconds": cpu["helper_cpu_seconds"] if redis else None,
        "cpu": cpu,
        "waited_for_quiet_s": waited,
        "disturbed": disturbed,
        "load_wall_seconds": wall,
    }
    log(
        f"{broker}/{mode}: other processes {other:.1f} CPU-s"
        + (" (disturbed)" if disturbed else "")
        + f"; {ok / a.duration:,.0f} requests/s, "
        f"{ok * items / a.duration:,.0f} messages/s; latency p50/p99 per process {lat}"
    )
    return result


def wait_quiet(pids: list[int], helpers: list[int], limit_s: float) -> float:
    """Wait (up to ``limit_s``) until other processes use less than :data:`DISTURBED_SHARE` of a
    CPU over a short probe; return the seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < limit_s:
        window = procstat.Window(pids, [], helpers)
        time.sleep(QUIET_PROBE_S)
        other = runner.num(window.close()["other_cpu_seconds"])
        if other < DISTURBED_SHARE * QUIET_PROBE_S:
            break
    return time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    runner.raise_fd_limit()
    brokers = a.broker or ["redis", "memory"]
    modes = a.mode or ["single", "batch"]
    json_path = a.json or runner.RESULTS / f"publish-api-{runner.stamp()}.json"
    doc = runner.header("publish-api", a.label, vars(a))
    runs: list[dict[str, object]] = []
    for broker in brokers:
        api_key, secret = secrets.token_urlsafe(24), secrets.token_urlsafe(32)
        redis = redisproc.start(procstat.parse_cpus(a.redis_cpus)) if broker == "redis" else None
        env = {
            "PUSHSVC_API_KEYS": api_key,
            "PUSHSVC_TOKEN_SECRET": secret,
            **({"PUSHSVC_REDIS_URL": redis.url} if redis else {}),
            **runner.code_env(a.server_code),
        }
        node = server.start(
            server.DEFAULT_CMD,
            env,
            procstat.parse_cpus(a.server_cpus),
            json_path.with_suffix(f".{broker}.server.log"),
            [],
        )
        try:
            asyncio.run(server.wait_ready(node, 60.0))
            log(f"{broker}: node pid {node.pid}" + (f", redis pid {redis.pid}" if redis else ""))
            runs.extend(measure(a, broker, mode, node, api_key, redis) for mode in modes)
        finally:
            node.stop(15.0)
            if redis:
                redis.stop()
    doc["runs"] = runs
    rows = [row(r) for r in runs]
    notes = [
        (
            f"node on CPUs {a.server_cpus}, {a.load_procs} load process(es) with "
            f"{a.connections} keep-alive connections on {a.client_cpus}, redis-server on "
            f"{a.redis_cpus or 'any CPU'}; no WebSocket client connected (publish path only)"
        )
    ]
    notes.extend(
        f"{r['broker']}/{r['mode']}: first non-202 answer: {r['sample_error']}"
        for r in runs
        if r["sample_error"]
    )
    doc["table"] = rows_json(rows)
    doc["notes"] = notes
    write_json(json_path, doc)
    print_table("pushsvc publish API throughput · one node", rows)
    return finish(rows, notes, json_path, check=a.check)


def row(r: dict[str, object]) -> Row:
    n = runner.num
    per = r["latency_ms_per_process"]
    p50 = stats.median([n(x.get("p50")) for x in per]) if isinstance(per, list) else float("nan")
    p99 = max((n(x.get("p99")) for x in per), default=float("nan")) if isinstance(per, list) else 0
    ok = n(r["accepted_in_window"])
    # CPU is read over a window a little shorter than the load's: scale the requests to it
    share = n(runner.dig(r, "cpu", "seconds")) / n(r["seconds"])
    in_window = max(ok * (1.0 if math.isnan(share) else share), 1.0)
    cpu_us = n(r["server_cpu_seconds"]) * 1e6 / in_window
    redis_cpu = r.get("redis_cpu_seconds")
    extra = f", Redis {n(redis_cpu) * 1e6 / in_window:.0f} µs" if redis_cpu is not None else ""
    errs = sum(
        v
        for s in (r["statuses"] if isinstance(r["statuses"], list) else [])
        for k, v in s.items()
        if k != "202"
    )
    detail = (
        f"latency p50 {p50:.1f} · p99 {p99:.1f} ms; server CPU {cpu_us:.0f} µs/request{extra}; "
        f"{errs} non-202" + ("; DISTURBED by other processes" if r.get("disturbed") else "")
    )
    if r["mode"] == "single":
        rps = n(r["requests_per_second"])
        return Row(
            f"{r['broker']} broker · POST /v1/messages",
            f"{rps:,.0f} requests/s ({detail})",
            f"≥ {TARGET_PUBLISH_RPS:,.0f}/s",
            met=rps >= TARGET_PUBLISH_RPS and errs == 0,
        )
    mps = n(r["messages_per_second"])
    return Row(
        f"{r['broker']} broker · POST /v1/messages/batch ({r['items_per_request']} per request)",
        f"{mps:,.0f} messages/s, {n(r['requests_per_second']):,.0f} requests/s ({detail})",
        f"≥ {TARGET_BATCH_MPS:,.0f} messages/s",
        met=mps >= TARGET_BATCH_MPS and errs == 0,
    )


if __name__ == "__main__":
    sys.exit(main())
