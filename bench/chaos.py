"""Fault campaign: do the delivery guarantees hold while nodes and Redis are hurt at random?

    .venv/bin/python -m bench.chaos --seed 7 --duration 600 --nodes 3 --devices 60 --rate 20
    .venv/bin/python -m bench.chaos --faults kill,term,drop --duration 60 --json
    .venv/bin/python -m bench.chaos --redis sentinel --faults failover,kill,pubsub --seed 3

``--redis`` chooses Redis: one ``standalone`` server (the default), or ``sentinel`` (a master,
two replicas, three sentinels) or ``cluster`` (three masters with a replica each), see
:mod:`bench.chaos_topology`; there the ``failover`` fault kills the master, and the verdict also
gives, per failover, how long the publishers were refused. Nodes then confirm each publish on
``--min-replicas`` replicas (``WAIT``, default 1) before its 202, so a 202'd message is on a
replica before its master can die.

Starts a persistent ``redis-server`` (append-only file), ``--nodes`` nodes with fault injection
on, Alertmanager and ``pushsvc monitor`` (all on free ports of 127.0.0.1). ``--devices`` devices
(the project's Python client: auto-ack, resume; ``--per-user`` per user, a user's devices on
different nodes, every third user also reads a topic) and ``--publishers`` callers publishing
``--rate`` messages per second in all, each with its own idempotency key, retrying every 503,
409, timeout and refused connection with the same key. Meanwhile the faults of ``--faults``
(see :mod:`bench.chaos_faults`) are injected every ``--fault-every`` seconds, drawn from
``--seed``: the same seed replays the same faults on the same targets.

Then it waits for the last deliveries and for the monitor's loss checks, and judges (see
:mod:`bench.chaos_check`): every 202'd id delivered to every device its address covers (or
expired), nothing misrouted, one id per key, the monitor reporting the deliberate losses and no
others. Prints the verdict as a table (``--json``: JSON), writes JSON to ``--report`` (default
``bench/results/chaos-<seed>.json``) and exits 1 when a guarantee is broken.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench import provenance, soak
from bench.chaos_check import dropped, judge, logged_drops, missing_pairs
from bench.chaos_cluster import CALLERS, ChaosMonitor, ChaosNode, ChaosRedis, settle_policy
from bench.chaos_faults import ALL_FAULTS, FAILOVER_FAULTS, FAULTS, Injector, schedule
from bench.chaos_load import Device, Publisher, devices_for
from bench.chaos_topology import Topology, topology

RESULTS = soak.RESULTS


def options(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.chaos",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--seed", type=int, default=1, help="seed of faults and load [1]")
    p.add_argument("--duration", type=float, default=120, help="seconds of load and faults [120]")
    p.add_argument("--nodes", type=int, default=3, help="nodes [3]")
    p.add_argument("--devices", type=int, default=24, help="devices in all [24]")
    p.add_argument("--per-user", type=int, default=2, help="devices per user [2]")
    p.add_argument("--rate", type=float, default=10, help="publishes per second in all [10]")
    p.add_argument("--publishers", type=int, default=3, help="callers publishing [3]")
    p.add_argument(
        "--redis",
        choices=("standalone", "sentinel", "cluster"),
        default="standalone",
        help="Redis topology [standalone]",
    )
    p.add_argument("--faults", help="comma list [all of the topology's]: " + ",".join(ALL_FAULTS))
    p.add_argument(
        "--min-replicas", type=int, help="nodes' redis_min_replicas [0 standalone, else 1]"
    )
    p.add_argument(
        "--redis-config",
        action="append",
        default=[],
        metavar="LINE",
        help="a config line for every Sentinel or Cluster data process (repeatable)",
    )
    p.add_argument("--refusal-limit", type=float, default=5.0, help="most s a failover refuses [5]")
    p.add_argument("--fault-every", type=float, default=8, help="seconds between faults [8]")
    p.add_argument("--settle", type=float, default=30, help="most s to wait for deliveries [30]")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("--report", help="JSON file [bench/results/chaos-<seed>.json]")
    p.add_argument("--keep-logs", action="store_true", help="keep the processes' logs")
    args = p.parse_args(argv)
    standalone = args.redis == "standalone"
    if args.faults is None:
        args.faults = ",".join(FAULTS if standalone else ALL_FAULTS)
    if args.min_replicas is None:
        args.min_replicas = 0 if standalone else 1
    args.fault_list = [f for f in args.faults.split(",") if f]
    unknown = set(args.fault_list) - set(ALL_FAULTS)
    if unknown:
        p.error(f"unknown faults {sorted(unknown)}; known: {','.join(ALL_FAULTS)}")
    if standalone and set(args.fault_list) & set(FAILOVER_FAULTS):
        p.error("the failover fault needs --redis sentinel or cluster")
    if standalone and args.redis_config:
        p.error("--redis-config needs --redis sentinel or cluster")
    if not 1 <= args.publishers <= CALLERS:
        p.error(f"--publishers must be 1 to {CALLERS}")
    if args.nodes < 2:
        p.error("--nodes must be 2 or more")
    return args


async def campaign(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    (work / "redis").mkdir()
    redis: ChaosRedis | Topology
    redis = (
        ChaosRedis(work / "redis")
        if args.redis == "standalone"
        else topology(args.redis, work / "redis", args.redis_config)
    )
    try:
        await asyncio.to_thread(redis.start)
    except BaseException:
        redis.stop()
        raise
    nodes = [
        ChaosNode(f"chaos-{i}", redis.url, work, min_replicas=args.min_replicas)
        for i in range(args.nodes)
    ]
    monitor: ChaosMonitor | None = None
    try:
        with soak.alertmanager() as am:
            for node in nodes:
                await asyncio.to_thread(node.start)
            monitor = ChaosMonitor(redis.url, am, work)
            await asyncio.to_thread(monitor.start)
            return await _run(args, redis, nodes, monitor, am)
    finally:
        if monitor is not None:
            monitor.stop()
        for node in nodes:
            node.stop()
        redis.stop()


async def _run(
    args: argparse.Namespace,
    redis: ChaosRedis | Topology,
    nodes: list[ChaosNode],
    mon: ChaosMonitor,
    am: str,
) -> dict[str, Any]:
    devices = await devices_for(nodes, args.devices, args.per_user)
    users = sorted({d.user for d in devices})
    index = {n.node_id: i for i, n in enumerate(nodes)}
    first = {d.user: index[d.node] for d in devices if d.name.endswith("-d0")}
    tasks = [asyncio.create_task(d.run(), name=d.name) for d in devices]
    alerts = soak.AlertLog(am)
    stop_all = asyncio.Event()
    watcher = asyncio.create_task(alerts.watch(stop_all))
    try:
        await _connected(devices, 60)
        faults = schedule(
            args.seed, args.duration, len(nodes), len(users), args.fault_list, args.fault_every
        )
        rng = random.Random(args.seed)
        pubs = [
            Publisher(f"c{i}", nodes, users, random.Random(rng.random()))
            for i in range(args.publishers)
        ]
        injector = Injector(redis, nodes, users, first)
        stop_load, stop_faults = asyncio.Event(), asyncio.Event()
        started = time.monotonic()
        load = [asyncio.create_task(p.run(args.rate / len(pubs), stop_load)) for p in pubs]
        chaos = asyncio.create_task(injector.run(faults, started, stop_faults))
        await asyncio.sleep(args.duration)
        stop_faults.set()
        await chaos  # the fault under way is undone first
        stop_load.set()
        await asyncio.gather(*load)
        last_publish = time.monotonic()
        await asyncio.to_thread(injector.repair)
        settled = await _settle(pubs, devices, injector, args.settle, nodes[0].logs)
        wait_monitor = last_publish + settle_policy() - time.monotonic()
        await asyncio.sleep(max(0.0, wait_monitor))
        try:
            said: dict[str, dict[str, float]] | None = await asyncio.to_thread(mon.missing)
        except (OSError, httpx.HTTPError):
            said = None  # judged as a failure: the monitor must answer
        loss_alerts = {n for (name, n) in alerts.seen if name == "PushDeliveryLoss"}
        verdict = await asyncio.to_thread(
            judge,
            pubs,
            devices,
            injector.done,
            nodes[0].api,
            said,
            loss_alerts,
            last_publish,
            args.refusal_limit,
            nodes[0].logs,
        )
    finally:
        stop_all.set()
        await watcher
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "settled_after_s": settled,
        "faults": [f.row() for f in injector.done],
        "alerts_seen": sorted(f"{a}/{n}" for a, n in alerts.seen),
        "node_exits": {n.node_id: n.exits for n in nodes},
        "verdict": verdict.rows,
        "facts": verdict.facts,
        "failed": verdict.failed,
    }


async def _connected(devices: list[Device], within: float) -> None:
    deadline = time.monotonic() + within
    while not all(d.connections for d in devices):
        if time.monotonic() > deadline:
            late = [d.name for d in devices if not d.connections]
            raise TimeoutError(f"devices not connected after {within} s: {late[:5]}")
        await asyncio.sleep(0.2)


async def _settle(
    pubs: list[Publisher], devices: list[Device], injector: Injector, within: float, logs: Path
) -> float | None:
    """Wait until nothing is missing but what the ``drop`` fault ate; seconds waited (None:
    still missing after ``within``)."""
    start = time.monotonic()
    while time.monotonic() - start < within:
        missing, _ = missing_pairs(pubs, devices)
        logged = logged_drops(logs)
        if all(dropped(m.sent, m.device, injector.done, logged) for m in missing):
            return round(time.monotonic() - start, 1)
        await asyncio.sleep(1)
    return None


def print_table(result: dict[str, Any]) -> None:
    print(
        f"fault campaign  redis {result.get('redis', 'standalone')}  seed {result['seed']}  "
        f"{result['duration']:g} s  "
        f"{result['nodes']} nodes  {result['devices']} devices  {result['rate']:g} msg/s  "
        f"commit {str(result['commit'])[:10]}"
    )
    print(f"\n{'t':>6} {'fault':<14} {'target':<9} {'param':>6} {'took':>5}  outcome")
    for f in result["faults"]:
        print(
            f"{f['started']:>6} {f['kind']:<14} {f['node']:<9} {f['param']:>6} "
            f"{f['took']:>5}  {f['outcome']}"
        )
    print(f"\n{'invariant':<34} {'result':<6} {'value':>6}  detail")
    for r in result["verdict"]:
        print(f"{r['invariant']:<34} {r['result']:<6} {r['value']!s:>6}  {r['detail']}")
    print()
    for k, v in result["facts"].items():
        print(f"{k:<26} {v}")
    print(f"{'alerts seen':<26} {result['alerts_seen']}")
    for f in result["faults"]:
        if f["kind"] == "failover" and f["failover"]:
            w = f["failover"]
            print(
                f"{'failover at ' + str(f['started']) + ' s':<26} refused {w.get('refused_s')} s "
                f"(first 202 after {w.get('first_202_s')} s, last refusal "
                f"{w.get('last_refused_s')} s: {w.get('refused_answers')}), promoted after "
                f"{w['promoted_s']} s"
            )
    print(f"{'settled after s':<26} {result['settled_after_s']}")


def main(argv: list[str] | None = None) -> int:
    args = options(argv)
    work = Path(tempfile.mkdtemp(prefix="pushsvc-chaos-"))
    head = {
        "argv": sys.argv[1:] if argv is None else argv,  # replays the same campaign
        "seed": args.seed,
        "redis": args.redis,
        "min_replicas": args.min_replicas,
        "redis_config": args.redis_config,
        "duration": args.duration,
        "nodes": args.nodes,
        "devices": args.devices,
        "per_user": args.per_user,
        "rate": args.rate,
        "publishers": args.publishers,
        "fault_list": args.fault_list,
        "fault_every": args.fault_every,
        "started_at": datetime.now(UTC).isoformat(),
        **provenance.git_state(soak.ROOT),
        "logs": str(work),
    }
    try:
        result = head | asyncio.run(campaign(args, work))
    finally:
        if not args.keep_logs:
            shutil.rmtree(work, ignore_errors=True)
    path = Path(args.report) if args.report else RESULTS / f"chaos-{args.seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str))
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print_table(result)
        print(f"-> {path}")
    return 1 if result["failed"] else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
