"""User-targeted messages across two nodes on one Redis: publish on node A, clients on node B (and
mixed, and on A itself as the single-node reference).

Run from the repository root::

    python -m bench.cluster_users                  # 2,000 clients, 1,000 msg/s for 15 s
    python -m bench.cluster_users --scenario b --rate 1000 --duration 20

It starts a ``redis-server`` and two ``pushsvc serve`` processes of its own (separate processes,
not ``--workers``) on free ports, pinned to ``--a-cpus`` and ``--b-cpus``, and runs
``bench.fanout`` in attach mode once per scenario: every publish goes to node A's
``POST /v1/messages``; the clients connect to B (``b``), half to A and half to B (``mixed``) or all
to A (``a``). Each scenario uses its own user ids, so no client is replayed another scenario's
history. Latency runs from just before the publish request is written to the frame's arrival at
the client (one machine clock).

Prints a table and writes ``bench/results/cluster-users-<UTC time>.json`` (each fan-out run's own
JSON is next to it).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
from pathlib import Path

from bench import procstat, redisproc, runner, server
from bench.report import Row, finish, log, print_table, rows_json, write_json
from bench.targets import TARGET_CLUSTER_USER_P99_MS

SCENARIOS = {
    "b": "publish on A, clients on B",
    "mixed": "publish on A, clients half on A, half on B",
    "a": "publish on A, clients on A (single-node reference)",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.cluster_users",
        description="User-targeted publish → client latency across two nodes on one Redis.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("-n", "--connections", type=int, default=2000, help="clients (one per user)")
    p.add_argument("--rate", type=float, default=1000.0, help="user messages per second")
    p.add_argument("--duration", type=float, default=15.0, help="seconds of publishing")
    p.add_argument(
        "--scenario",
        action="append",
        choices=sorted(SCENARIOS),
        help="repeat; default: b, mixed, a",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        default=50,
        help="handshakes in flight per client process (each needs a Redis connection from the "
        "node's pool for its replay)",
    )
    p.add_argument("--a-cpus", default="0", help="CPUs of node A")
    p.add_argument("--b-cpus", default="1", help="CPUs of node B")
    p.add_argument("--client-cpus", default="1", help="CPUs of the clients and the publisher")
    p.add_argument("--redis-cpus", default="", help="CPUs of redis-server (default: any)")
    p.add_argument("--server-code", type=Path, help="import the server from this source copy")
    p.add_argument("--timeout", type=float, default=600.0, help="limit per scenario, seconds")
    p.add_argument("--label", default="")
    p.add_argument("--json", type=Path, help="default bench/results/cluster-users-<time>.json")
    p.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    runner.raise_fd_limit()
    scenarios = a.scenario or ["b", "mixed", "a"]
    json_path = a.json or runner.RESULTS / f"cluster-users-{runner.stamp()}.json"
    doc = runner.header("cluster-users", a.label, vars(a))
    api_key, secret = secrets.token_urlsafe(24), secrets.token_urlsafe(32)
    redis = redisproc.start(procstat.parse_cpus(a.redis_cpus))
    log(f"redis-server pid {redis.pid} on {redis.url}")
    nodes: list[server.StartedServer] = []
    results: dict[str, dict[str, object]] = {}
    try:
        for name in ("a", "b"):
            env = {
                "PUSHSVC_API_KEYS": api_key,
                "PUSHSVC_TOKEN_SECRET": secret,
                "PUSHSVC_HEARTBEAT": "3600",
                "PUSHSVC_REDIS_URL": redis.url,
                "PUSHSVC_NODE_ID": f"bench-{name}",
                **runner.code_env(a.server_code),
            }
            log_path = json_path.with_suffix(f".node-{name}.log")
            cpus = procstat.parse_cpus(a.a_cpus if name == "a" else a.b_cpus)
            node = server.start(server.DEFAULT_CMD, env, cpus, log_path, [])
            nodes.append(node)
            asyncio.run(server.wait_ready(node, 60.0))
            log(f"node {name}: pid {node.pid}, {node.client_url}, {node.internal_urls[0]}")
        node_a, node_b = nodes
        doc["nodes"] = {
            "a": {"pid": node_a.pid, "command": node_a.command},
            "b": {"pid": node_b.pid, "command": node_b.command},
            "redis_pid": redis.pid,
        }
        for scenario in scenarios:
            clients = {"b": [node_b], "mixed": [node_a, node_b], "a": [node_a]}[scenario]
            args = [
                "-n", str(a.connections),
                "--internal-url", node_a.internal_urls[0],
                "--internal-url", node_b.internal_urls[0],
                "--server-pid", str(node_a.pid), "--server-pid", str(node_b.pid),
                "--helper-pid", str(redis.pid),
                "--api-key", api_key, "--token-secret", secret,
                "--client-cpus", a.client_cpus,
                "--client-procs", str(len(clients)),
                "--concurrency", str(a.concurrency),
                "--user-prefix", f"{scenario}{runner.stamp()}-",
                "--broadcasts", "1", "--max-broadcasts", "2",
                "--user-rate", f"{a.rate:g}", "--user-duration", f"{a.duration:g}",
                "--timeout", str(a.timeout),
                "--label", f"cluster-users {scenario}: {SCENARIOS[scenario]}",
            ]  # fmt: skip
            for node in clients:
                args += ["--client-url", node.client_url]
            path = json_path.with_suffix(f".{scenario}.json")
            results[scenario] = runner.run_fanout(args, path, a.timeout)
            results[scenario]["json"] = str(path)
    finally:
        for node in nodes:
            node.stop(15.0)
        redis.stop()
    doc["scenarios"] = {k: v.get("json") for k, v in results.items()}
    rows = [row(a, scenario, results[scenario]) for scenario in scenarios if scenario in results]
    notes = [
        (
            f"node A on CPUs {a.a_cpus}, node B on {a.b_cpus}, clients and the publisher on "
            f"{a.client_cpus}, redis-server on {a.redis_cpus or 'any CPU'}"
        )
    ]
    for scenario, run in results.items():
        raw = runner.dig(run, "notes")
        notes += (
            [f"{scenario}: {x}" for x in raw if isinstance(x, str)] if isinstance(raw, list) else []
        )
    doc["table"] = rows_json(rows)
    doc["notes"] = notes
    write_json(json_path, doc)
    print_table(
        f"pushsvc user-targeted across 2 nodes · {a.connections:,} clients · "
        f"{a.rate:g}/s for {a.duration:g} s",
        rows,
    )
    return finish(rows, notes, json_path, check=a.check)


def row(a: argparse.Namespace, scenario: str, run: dict[str, object]) -> Row:
    d, n = runner.dig, runner.num
    lat = d(run, "user", "latency_ms")
    p50, p99, mx = n(d(lat, "p50")), n(d(lat, "p99")), n(d(lat, "max"))
    missing, dups = n(d(run, "user", "missing")), n(d(run, "user", "duplicates"))
    errors = d(run, "user", "errors")
    n_err = sum(v for v in errors.values() if isinstance(v, int)) if isinstance(errors, dict) else 0
    http = n(d(run, "user", "publish_http_ms", "p99"))
    value = (
        f"p50 {p50:.1f} · p99 {p99:.1f} · max {mx:.1f} ms "
        f"({missing:.0f} missing, {dups:.0f} dup, {n_err} errors; publish HTTP p99 {http:.1f} ms)"
    )
    ok = p99 <= TARGET_CLUSTER_USER_P99_MS and missing == 0 and dups == 0 and n_err == 0
    return Row(
        f"{SCENARIOS[scenario]}: publish → client",
        value,
        f"p99 ≤ {TARGET_CLUSTER_USER_P99_MS:g} ms",
        met=ok if scenario != "a" else None,
    )


if __name__ == "__main__":
    sys.exit(main())
