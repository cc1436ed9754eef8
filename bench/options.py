"""Command line of ``python -m bench.fanout``: one frozen :class:`Options`, built only here."""

from __future__ import annotations

import argparse
import math
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench import procstat, server
from bench.workers import REPO_ROOT


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
    token_algorithm: str
    server_pids: list[int]
    helper_pids: list[int]
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
    max_broadcasts: int
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
    run_id: str


def parse_args(argv: list[str] | None = None) -> Options:
    p = argparse.ArgumentParser(
        prog="python -m bench.fanout",
        description="Connections, broadcast and user-targeted fan-out against a pushsvc node.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("-n", "--connections", type=int, default=2000, help="client connections")
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
    g.add_argument(
        "--server-env", action="append", default=[], metavar="KEY=VALUE", help="(repeat)"
    )
    g.add_argument("--client-url", action="append", default=[], help="ws://host:port/ws (repeat)")
    g.add_argument("--internal-url", action="append", default=[], help="http://host:port (repeat)")
    g.add_argument("--api-key", help="internal API key (generated with --start-server)")
    g.add_argument(
        "--token-secret",
        help="PUSHSVC_TOKEN_SECRET, to mint client tokens locally (else via POST /v1/tokens)",
    )
    g.add_argument(
        "--token-algorithm",
        choices=("HS256", "RS256", "ES256"),
        default="HS256",
        help="client token algorithm; RS256 / ES256 need --start-server, which makes a key pair "
        "and gives the node its public key (PUSHSVC_TOKEN_PUBLIC_KEYS)",
    )
    g.add_argument(
        "--server-pid", action="append", type=int, default=[], help="PID to measure (repeat)"
    )
    g.add_argument(
        "--helper-pid",
        action="append",
        type=int,
        default=[],
        help="PID of a helper of the system under test, e.g. its redis-server: its CPU time is "
        "not counted as other processes' (repeat)",
    )
    g.add_argument(
        "--no-children",
        action="store_true",
        help="measure only the given PIDs, not their child processes",
    )
    g.add_argument("--pin-server", action="store_true", help="pin --server-pid to --server-cpus")
    g.add_argument("--server-cpus", default="0", help="CPUs for a started server, e.g. 0 or 0-5")
    g.add_argument("--client-cpus", default="1", help="CPUs for the load workers and this process")
    g.add_argument("--heartbeat", type=float, default=3600.0, help="PUSHSVC_HEARTBEAT if started")
    c = p.add_argument_group("clients")
    c.add_argument("--client-procs", type=int, default=0, help="default: one per 5,000 conns")
    c.add_argument("--source-base", default="127.0.0.2", help="first client source address")
    c.add_argument("--concurrency", type=int, default=200, help="handshakes in flight per process")
    c.add_argument(
        "--connect-timeout", type=float, default=30.0, help="seconds from connect to welcome"
    )
    c.add_argument("--token-ttl", type=int, default=7200, help="seconds")
    c.add_argument("--user-prefix", default="u", help="connection i is user <prefix><i>")
    m = p.add_argument_group("measurement")
    m.add_argument("--settle", type=float, default=1.0, help="seconds before each RSS reading")
    m.add_argument(
        "--broadcasts", type=int, default=5, help="broadcasts to time undisturbed by others"
    )
    m.add_argument(
        "--max-broadcasts",
        type=int,
        default=0,
        help="stop after this many broadcasts in all, disturbed or not; 0: 3 times --broadcasts",
    )
    m.add_argument(
        "--broadcast-interval", type=float, default=1.0, help="seconds between broadcasts"
    )
    m.add_argument(
        "--collect-timeout", type=float, default=10.0, help="seconds to wait for a broadcast"
    )
    m.add_argument(
        "--quiet-wait",
        type=float,
        default=10.0,
        help="before the ramp and each broadcast, wait up to this many seconds for other "
        "processes on the machine to go quiet (0: don't)",
    )
    m.add_argument("--user-rate", type=float, default=200.0, help="user messages per second")
    m.add_argument("--user-duration", type=float, default=10.0, help="seconds (0 to skip)")
    m.add_argument("--user-drain", type=float, default=15.0, help="seconds to wait for stragglers")
    m.add_argument("--timeout", type=float, default=900.0, help="global limit, seconds")
    m.add_argument("--seed", type=int, default=1, help="for the choice of user-targeted users")
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
    if a.token_algorithm != "HS256" and not a.start_server:
        p.error(f"--token-algorithm {a.token_algorithm} needs --start-server")
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
        token_algorithm=a.token_algorithm,
        server_pids=a.server_pid,
        helper_pids=a.helper_pid,
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
        max_broadcasts=a.max_broadcasts or 3 * a.broadcasts,
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
        run_id=secrets.token_hex(6),
    )
