"""A peer in the same harness: pushsvc and Socket.IO 4.8, two nodes on one Redis each.

Run from the repository root (``npm install`` in ``bench/peer_socketio`` first)::

    python -m bench.peer                       # 19,000 clients, 5 broadcasts, 1,000 msg/s for 15 s
    python -m bench.peer -n 2000 --system pushsvc --system socketio-sharded

For each system it starts a redis-server of its own and two nodes on free ports (node 1 pinned to
``--node1-cpus``, node 2 to ``--node2-cpus``), connects ``-n`` clients from the same load processes
(``bench.wsload``, speaking pushsvc's protocol or Socket.IO's, ``bench.sioconn``), half on each
node, then publishes everything on node 1: ``--broadcasts`` broadcasts to all (publish → last
client; each client must get each broadcast exactly once) and user-targeted messages to random
users at ``--rate`` for ``--duration`` seconds (half of them cross Redis to node 2). The systems:

* ``pushsvc``: two ``pushsvc serve``, ``POST /v1/messages`` on node 1's internal API;
* ``socketio-redis``: two ``bench/peer_socketio/server.js`` with ``@socket.io/redis-adapter``'s
  ``createAdapter`` (PUBLISH / PSUBSCRIBE), ``POST /publish`` → ``io.to("user:<id>").emit``;
* ``socketio-sharded``: the same with ``createShardedAdapter`` (Redis 7 SPUBLISH / SSUBSCRIBE).

Prints one table (lower is better on every figure; "ahead?" says whether pushsvc is ahead of
every peer) and writes ``bench/results/peer-<UTC time>.json`` with the code's provenance and the
Socket.IO package versions.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import orjson
from rich.console import Console
from rich.table import Table

from bench import procstat, runner, stats
from bench.peer_run import SOCKETIO_DIR, Plan, System, measure
from bench.report import log, write_json

SYSTEMS = {
    s.name: s
    for s in (
        System("pushsvc", "pushsvc 2 nodes", None),
        System("socketio-redis", "Socket.IO redis adapter", "redis"),
        System("socketio-sharded", "Socket.IO sharded adapter", "sharded"),
    )
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.peer",
        description="pushsvc against Socket.IO 4.8 (redis / sharded adapter), 2 nodes each.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("-n", "--connections", type=int, default=19_000, help="clients, half per node")
    p.add_argument("--system", action="append", choices=sorted(SYSTEMS), help="repeat; default all")
    p.add_argument(
        "--broadcasts",
        type=int,
        default=5,
        help="broadcasts to time undisturbed (other processes under 10%% of a CPU meanwhile)",
    )
    p.add_argument("--max-broadcasts", type=int, default=15, help="broadcasts in all, at most")
    p.add_argument("--broadcast-interval", type=float, default=2.0, help="seconds between them")
    p.add_argument("--collect-timeout", type=float, default=30.0, help="seconds per broadcast")
    p.add_argument("--rate", type=float, default=1000.0, help="user-targeted messages per second")
    p.add_argument("--duration", type=float, default=15.0, help="seconds of user-targeted publish")
    p.add_argument("--drain", type=float, default=15.0, help="seconds to wait for late arrivals")
    p.add_argument("--settle", type=float, default=3.0, help="seconds before and after the ramp")
    p.add_argument("--client-procs", type=int, default=2, help="load processes (127.0.0.2, …)")
    p.add_argument("--concurrency", type=int, default=50, help="handshakes in flight per process")
    p.add_argument("--node1-cpus", default="0")
    p.add_argument("--node2-cpus", default="1")
    p.add_argument("--client-cpus", default="", help="CPUs of the load processes (default: any)")
    p.add_argument(
        "--pushsvc-ack",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="pushsvc's user-targeted messages ask for acks (its default; Socket.IO has none)",
    )
    p.add_argument("--in-flight", type=int, default=256, help="publish requests in flight, at most")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout", type=float, default=900.0, help="limit per system, seconds")
    p.add_argument("--label", default="")
    p.add_argument("--json", type=Path, help="default bench/results/peer-<time>.json")
    return p.parse_args(argv)


def socketio_versions() -> dict[str, str | None]:
    """Installed versions of the Socket.IO side (node and the npm packages)."""
    out: dict[str, str | None] = {"node": None}
    node = shutil.which("node")
    if node is not None:
        out["node"] = subprocess.run(
            [node, "--version"], capture_output=True, text=True, check=False, timeout=10
        ).stdout.strip()
    for pkg in ("socket.io", "@socket.io/redis-adapter", "redis", "engine.io", "ws"):
        path = SOCKETIO_DIR / "node_modules" / pkg / "package.json"
        try:
            version = orjson.loads(path.read_bytes()).get("version")
        except (OSError, orjson.JSONDecodeError):
            version = None
        out[pkg] = version
    return out


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    names = a.system or list(SYSTEMS)
    installed = (SOCKETIO_DIR / "node_modules" / "socket.io").is_dir()
    if not installed and any(SYSTEMS[n].adapter for n in names):
        print(f"run `npm ci` in {SOCKETIO_DIR} first", file=sys.stderr)
        return 2
    runner.raise_fd_limit()
    json_path = a.json or runner.RESULTS / f"peer-{runner.stamp()}.json"
    doc = runner.header("peer", a.label, vars(a))
    doc["socketio"] = socketio_versions()
    doc["redis_server"] = _redis_version()
    plan = Plan(
        connections=a.connections,
        client_procs=a.client_procs,
        concurrency=a.concurrency,
        broadcasts=a.broadcasts,
        max_broadcasts=max(a.max_broadcasts, a.broadcasts),
        broadcast_interval=a.broadcast_interval,
        collect_timeout=a.collect_timeout,
        rate=a.rate,
        duration=a.duration,
        drain=a.drain,
        settle=a.settle,
        node_cpus=[procstat.parse_cpus(a.node1_cpus), procstat.parse_cpus(a.node2_cpus)],
        client_cpus=procstat.parse_cpus(a.client_cpus),
        seed=a.seed,
        timeout=a.timeout,
        log_dir=json_path.parent / json_path.stem,
        pushsvc_ack=a.pushsvc_ack,
        api_in_flight=a.in_flight,
    )
    results: dict[str, dict[str, object]] = {}
    for name in names:
        log(f"--- {name} ---")
        results[name] = asyncio.run(measure(SYSTEMS[name], plan))
        doc["systems"] = results
        write_json(json_path, doc)
    rows = table(names, results)
    doc["table"] = [dict(zip(["metric", *names, "ahead"], r, strict=True)) for r in rows]
    write_json(json_path, doc)
    print_rows(
        f"pushsvc and Socket.IO 4.8, 2 nodes on one Redis · N={a.connections:,}", names, rows
    )
    for name, res in results.items():
        if "error" in res:
            print(f"note: {name}: {res['error']}")
    print(f"JSON: {json_path}")
    return 0 if all("error" not in r for r in results.values()) else 2


def _redis_version() -> str | None:
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip()


def _lasts(doc: dict[str, object], reduce: Callable[[list[float]], float]) -> float:
    """``reduce`` of publish → last client over every broadcast, disturbed or not."""
    runs = runner.dig(doc, "broadcast", "runs")
    lasts = [_n(r, "last_ms") for r in (runs if isinstance(runs, list) else [])]
    return reduce([v for v in lasts if not math.isnan(v)])


def _least(values: list[float]) -> float:
    return min(values, default=math.nan)


def _per_delivery(doc: dict[str, object]) -> float:
    """Both nodes' CPU time over a broadcast's window divided by its deliveries, median of runs."""
    runs = runner.dig(doc, "broadcast", "runs")
    per = [
        _n(r, "cpu", "server_cpu_seconds") * 1e6 / _n(r, "received")
        for r in (runs if isinstance(runs, list) else [])
        if _n(r, "received") > 0
    ]
    return stats.median(per)


def _per_user(doc: dict[str, object], who: str) -> float:
    """CPU time of ``who`` while publishing user-targeted messages, per accepted message."""
    accepted = _n(doc, "user", "accepted")
    return _n(doc, "user", "cpu", who) * 1e6 / accepted if accepted > 0 else math.nan


def _n(doc: object, *path: str) -> float:
    return runner.num(runner.dig(doc, *path))


Figure = tuple[str, Callable[[dict[str, object]], float], str]

FIGURES: list[Figure] = [
    ("RSS per connection (both nodes)", lambda r: _n(r, "ramp", "rss_per_connection_kib"), "KiB"),
    ("CPU per handshake (both nodes)", lambda r: _n(r, "ramp", "cpu_per_handshake_us"), "µs"),
    ("ramp time", lambda r: _n(r, "ramp", "seconds"), "s"),
    ("broadcast → last client (median)", lambda r: _n(r, "broadcast", "last_ms_median"), "ms"),
    ("broadcast → last client (median of all runs)", lambda r: _lasts(r, stats.median), "ms"),
    ("broadcast → last client (best run)", lambda r: _lasts(r, _least), "ms"),
    ("broadcast → median client (median)", lambda r: _n(r, "broadcast", "p50_ms_median"), "ms"),
    ("user-targeted p50", lambda r: _n(r, "user", "latency_ms", "p50"), "ms"),
    ("user-targeted p99", lambda r: _n(r, "user", "latency_ms", "p99"), "ms"),
    ("user-targeted max", lambda r: _n(r, "user", "latency_ms", "max"), "ms"),
    ("publish HTTP p99", lambda r: _n(r, "user", "publish_http_ms", "p99"), "ms"),
    ("server CPU per broadcast delivery (median)", _per_delivery, "µs"),
    ("server CPU per user-targeted message", lambda r: _per_user(r, "server_cpu_seconds"), "µs"),
    ("redis CPU per user-targeted message", lambda r: _per_user(r, "helper_cpu_seconds"), "µs"),
]  # fmt: skip


def table(names: list[str], results: dict[str, dict[str, object]]) -> list[list[str]]:
    """Rows of ``[metric, value per system…, ahead?]``; ``ahead?`` compares pushsvc to the rest."""
    rows: list[list[str]] = []
    for label, get, unit in FIGURES:
        values = [get(results[n]) for n in names]
        cells = [_fmt(v, unit) for v in values]
        rows.append([label, *cells, _ahead(names, values)])
    opened = [
        f"{_n(results[n], 'ramp', 'ok'):,.0f} / {_n(results[n], 'ramp', 'requested'):,.0f}"
        for n in names
    ]
    rows.insert(0, ["connections open / requested", *opened, ""])
    exact = []
    for n in names:
        r = results[n]
        exact.append(
            f"{_n(r, 'broadcast', 'missing_total'):.0f} missing · "
            f"{_n(r, 'broadcast', 'duplicates_total'):.0f} dup / "
            f"{_n(r, 'user', 'missing'):.0f} missing · {_n(r, 'user', 'duplicates'):.0f} dup"
        )
    rows.append(["exactly once (broadcasts / user-targeted)", *exact, ""])
    counted = [str(runner.dig(results[n], "broadcast", "counted")) for n in names]
    rows.append(["broadcasts counted", *counted, ""])
    rate = [_fmt(_rate(results[n]), "/s") for n in names]
    rows.append(["user-targeted rate achieved", *rate, ""])
    other = [
        f"{_n(results[n], 'user', 'cpu', 'other_cpu_seconds'):.1f} s in "
        f"{_n(results[n], 'user', 'cpu', 'seconds'):.1f} s"
        for n in names
    ]
    rows.append(["other processes' CPU during the user-targeted phase", *other, ""])
    return rows


def _rate(doc: dict[str, object]) -> float:
    seconds = _n(doc, "user", "publish_seconds")
    return _n(doc, "user", "accepted") / seconds if seconds > 0 else math.nan


def _fmt(v: float, unit: str) -> str:
    if math.isnan(v):
        return "n/a"
    return f"{v:,.1f} {unit}" if v < 100 else f"{v:,.0f} {unit}"


def _ahead(names: list[str], values: list[float]) -> str:
    if "pushsvc" not in names or len(names) < 2:
        return ""
    ours = values[names.index("pushsvc")]
    others = [v for n, v in zip(names, values, strict=True) if n != "pushsvc"]
    if math.isnan(ours) or any(math.isnan(v) for v in others):
        return "?"
    return "yes" if all(ours < v for v in others) else "NO"


def print_rows(title: str, names: list[str], rows: list[list[str]]) -> None:
    t = Table(title=title, title_justify="left")
    t.add_column("metric")
    for n in names:
        t.add_column(SYSTEMS[n].title, justify="right")
    t.add_column("pushsvc ahead?", justify="center")
    for r in rows:
        t.add_row(*r, style="red" if r[-1] == "NO" else None)
    Console(width=220).print(t)


if __name__ == "__main__":
    sys.exit(main())
