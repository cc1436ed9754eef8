"""Node loss at scale: ``kill -9`` a node holding thousands of sessions while messages flow.

Run from the repository root::

    python -m bench.nodeloss                     # 19,000 sessions on the victim, 3 nodes
    python -m bench.nodeloss -n 2000 --after 15

It starts a ``redis-server`` and ``--nodes`` ``pushsvc serve`` processes of its own on free ports
(node 0 is the victim), and ``--client-procs`` load processes (``bench.resumeload``, each on its
own source address 127.0.0.2, .3, …). ``-n`` clients start on the victim and
``--survivor-sessions`` on each other node, one user and one device per client. Every client
knows every node's URL; when its connection ends it reconnects, after a full-jitter backoff, to
another node and resumes from the last offset it saw on each stream.

A publisher sends user-targeted messages at ``--rate`` per second to random users through the
survivors' ``POST /v1/messages`` (an idempotency key per message, retried with the same key on a
503 or a failed connection). It starts ``--before`` seconds before the kill and goes on
``--after`` seconds after it. Then the run waits (at most ``--settle`` s) until every accepted
message has reached its user's app, collects what every client saw, and judges
(:mod:`bench.nodeloss_figures`): all victim clients resumed within ``--target`` s of the kill,
no accepted message lost, none delivered twice to an app.

The nodes run as a deployment behind a load balancer would: there every client arrives from the
balancer's few addresses, so the per-address limit on connections before ``hello``
(``max_pending_per_address``) is raised out of the way (it is the balancer's job); the heartbeat
and every other setting are the defaults.

Prints a table and writes ``bench/results/nodeloss-<UTC time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import os
import random
import secrets
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import msgspec

from bench import nodeloss_figures, procstat, redisproc, runner, server
from bench.api import ApiClient
from bench.common import Ready
from bench.report import finish, log, print_table, rows_json, write_json
from bench.resumewire import (
    Collect,
    Command,
    Count,
    Counted,
    Failed,
    Ramp,
    Ramped,
    Reply,
    Report,
    Setup,
)
from bench.workers import spawn_module, stop_process

EVENT = "bench.nodeloss"
RETRY_S = 0.1
GIVE_UP_S = 30.0

R = TypeVar("R", bound=Reply)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.nodeloss",
        description="kill -9 a node holding N sessions; its clients resume on the survivors.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("-n", "--sessions", type=int, default=19_000, help="sessions on the victim")
    p.add_argument("--nodes", type=int, default=3, help="nodes, the victim included")
    p.add_argument("--survivor-sessions", type=int, default=1000, help="sessions per survivor")
    p.add_argument("--rate", type=float, default=200.0, help="user-targeted messages per second")
    p.add_argument("--before", type=float, default=10.0, help="seconds of publishing before kill")
    p.add_argument("--after", type=float, default=20.0, help="seconds of publishing after kill")
    p.add_argument("--window", type=float, default=10.0, help="'during' = this long after kill")
    p.add_argument("--target", type=float, default=10.0, help="every client resumed within, s")
    p.add_argument("--settle", type=float, default=30.0, help="most s to wait for deliveries")
    p.add_argument("--client-procs", type=int, default=4, help="load processes")
    p.add_argument("--concurrency", type=int, default=50, help="first handshakes in flight/proc")
    p.add_argument("--backoff-base", type=float, default=1.0, help="first reconnect jitter, s")
    p.add_argument("--backoff-cap", type=float, default=8.0, help="largest reconnect jitter, s")
    p.add_argument("--source-base", default="127.0.0.2", help="first client source address")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--server-code", type=Path, help="import the server from this source copy")
    p.add_argument("--label", default="")
    p.add_argument("--json", type=Path, help="default bench/results/nodeloss-<time>.json")
    p.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    a = p.parse_args(argv)
    if a.nodes < 2:
        p.error("--nodes must be 2 or more")
    return a


class LoadError(Exception):
    """A load process failed, exited early, or answered out of turn."""


class LoadProc:
    """One ``bench.resumeload`` process; commands on its stdin, replies on its stdout."""

    _decoder = msgspec.json.Decoder(Reply)

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def spawn(cls) -> LoadProc:
        return cls(await spawn_module("bench.resumeload", 1 << 28))

    async def call(self, cmd: Command, kind: type[R]) -> R:
        stdin, stdout = self.proc.stdin, self.proc.stdout
        assert stdin is not None
        assert stdout is not None
        stdin.write(msgspec.json.encode(cmd) + b"\n")
        await stdin.drain()
        line = await stdout.readline()
        if not line:
            raise LoadError(f"resumeload {self.proc.pid} exited with {await self.proc.wait()}")
        reply = self._decoder.decode(line)
        if isinstance(reply, Failed):
            raise LoadError(f"resumeload {self.proc.pid}: {reply.error}")
        if not isinstance(reply, kind):
            raise LoadError(f"resumeload {self.proc.pid} answered {type(reply).__name__}")
        return reply

    async def stop(self, grace: float) -> None:
        """Close stdin, wait ``grace`` s, then kill this process (by its PID)."""
        await stop_process(self.proc, grace)


@dataclass
class Sent:
    """One accepted publish: its user, the id of its 202, and when it was first sent."""

    seq: int
    user: int
    id: str
    sent_ns: int
    attempts: int


@dataclass
class Publisher:
    """User-targeted publishes through the survivors' internal APIs, retried with one key."""

    apis: list[ApiClient]
    run: str
    user_prefix: str
    users: int
    rng: random.Random
    accepted: list[Sent] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    abandoned: int = 0

    async def run_until(self, rate: float, stop: asyncio.Event) -> None:
        """Publish ``rate`` messages per second (one task each) until ``stop``; then wait for
        the publishes under way."""
        async with asyncio.TaskGroup() as tg:
            seq = 0
            next_at = time.monotonic()
            while not stop.is_set():
                tg.create_task(self.publish(seq, self.rng.randrange(self.users)))
                seq += 1
                next_at += 1 / rate
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), max(0.0, next_at - time.monotonic()))

    async def publish(self, seq: int, user: int) -> None:
        body = {
            "to": {"users": [f"{self.user_prefix}{user}"]},
            "event": EVENT,
            "data": {"run": self.run, "seq": seq},
            "idempotency_key": f"{self.run}-{seq}",
        }
        first_ns = 0
        deadline = time.monotonic() + GIVE_UP_S
        attempt = 0
        while time.monotonic() < deadline:
            api = self.apis[(seq + attempt) % len(self.apis)]
            attempt += 1
            try:
                resp = await api.post_json("/v1/messages", body)
            except (OSError, asyncio.IncompleteReadError) as exc:
                self.statuses[type(exc).__name__] += 1
                await asyncio.sleep(RETRY_S)
                continue
            first_ns = first_ns or resp.sent_ns
            self.statuses[str(resp.status)] += 1
            if resp.status == 202:
                answer = resp.json()
                assert isinstance(answer, dict)
                self.accepted.append(Sent(seq, user, str(answer["id"]), first_ns, attempt))
                return
            if resp.status != 503:
                break
            await asyncio.sleep(RETRY_S)
        self.abandoned += 1


def start_nodes(
    a: argparse.Namespace, redis_url: str, api_key: str, secret: str, json_path: Path
) -> list[server.StartedServer]:
    nodes: list[server.StartedServer] = []
    try:
        for i in range(a.nodes):
            env = {
                "PUSHSVC_API_KEYS": api_key,
                "PUSHSVC_TOKEN_SECRET": secret,
                "PUSHSVC_REDIS_URL": redis_url,
                "PUSHSVC_NODE_ID": f"nodeloss-{i}",
                "PUSHSVC_MAX_PENDING_PER_ADDRESS": "100000",
                "PUSHSVC_LOG_LEVEL": "WARNING",
                **runner.code_env(a.server_code),
            }
            log_path = json_path.with_suffix(f".node-{i}.log")
            nodes.append(server.start(server.DEFAULT_CMD, env, [], log_path, []))
        for node in nodes:
            asyncio.run(server.wait_ready(node, 60.0))
    except BaseException:
        for node in nodes:
            node.stop(5.0)
        raise
    return nodes


def homes(a: argparse.Namespace) -> list[int]:
    """The node each client starts on: ``-n`` on node 0, then the survivors' shares."""
    out = [0] * a.sessions
    for node in range(1, a.nodes):
        out += [node] * a.survivor_sessions
    random.Random(a.seed).shuffle(out)
    return out


async def scenario(
    a: argparse.Namespace,
    run: str,
    nodes: list[server.StartedServer],
    api_key: str,
    secret: str,
    redis_pid: int,
) -> dict[str, object]:
    home = homes(a)
    user_prefix = f"nl{run}-"
    base = ipaddress.IPv4Address(a.source_base)
    procs = [await LoadProc.spawn() for _ in range(a.client_procs)]
    share = -(-len(home) // a.client_procs)
    limit = max(120.0, len(home) / 200)
    deadline = limit + a.before + a.after + a.settle + 300
    try:
        setups = [
            Setup(
                worker=i,
                run=run,
                urls=[n.client_url for n in nodes],
                homes=home[i * share : (i + 1) * share],
                first=i * share,
                source_ip=str(base + i),
                user_prefix=user_prefix,
                token_secret=secret,
                token_ttl=3600,
                concurrency=a.concurrency,
                connect_timeout=30.0,
                backoff_base=a.backoff_base,
                backoff_cap=a.backoff_cap,
                deadline=deadline,
                seed=a.seed * 1000 + i,
            )
            for i in range(a.client_procs)
        ]
        await asyncio.gather(*(p.call(s, Ready) for p, s in zip(procs, setups, strict=True)))
        log(f"ramping {len(home):,} clients ({a.sessions:,} on the victim)")
        ramped = await asyncio.gather(*(p.call(Ramp(limit), Ramped) for p in procs))
        ok = sum(r.ok for r in ramped)
        ramp_s = max(r.seconds for r in ramped)
        log(f"{ok:,} of {len(home):,} clients welcomed in {ramp_s:.1f} s")
        if ok < len(home):
            raise RuntimeError(f"only {ok} of {len(home)} clients connected")
        victim, survivors = nodes[0], nodes[1:]
        apis = [ApiClient(n.internal_urls[0], api_key, size=64) for n in survivors]
        pub = Publisher(apis, run, user_prefix, len(home), random.Random(a.seed))
        stop = asyncio.Event()
        publishing = asyncio.create_task(pub.run_until(a.rate, stop))
        await asyncio.sleep(max(0.0, a.before - a.window))
        pids = ([n.pid for n in survivors], [p.proc.pid for p in procs])
        window = procstat.Window(*pids, [redis_pid, victim.pid])
        await asyncio.sleep(min(a.before, a.window))
        cpu_before = window.close()
        window = procstat.Window(*pids, [redis_pid])
        whole = procstat.Window(*pids, [redis_pid])
        kill_ns = time.time_ns()
        os.kill(victim.pid, signal.SIGKILL)
        log(f"kill -9 {victim.pid} (the victim, {a.sessions:,} sessions)")
        await asyncio.sleep(a.window)
        cpu_during = window.close()
        await asyncio.sleep(max(0.0, a.after - a.window))
        cpu_after = whole.close()
        stop.set()
        await publishing
        end_ns = time.time_ns()
        settled = await settle(procs, len(pub.accepted), a.settle)
        log(f"published {len(pub.accepted):,} accepted; settled after {settled} s")
        reports = await asyncio.gather(*(p.call(Collect(), Report) for p in procs))
        for api in apis:
            await api.__aexit__(None, None, None)
    finally:
        await asyncio.gather(*(p.stop(10.0) for p in procs), return_exceptions=True)
    return nodeloss_figures.figures(
        a,
        nodeloss_figures.Run(
            kill_ns=kill_ns,
            end_ns=end_ns,
            victim_node="nodeloss-0",
            ramp_s=ramp_s,
            accepted=[(s.user, s.id, s.sent_ns, s.attempts) for s in pub.accepted],
            statuses=dict(pub.statuses),
            abandoned=pub.abandoned,
            reports=list(reports),
            settled_s=settled,
            cpu_before=cpu_before,
            cpu_during=cpu_during,
            cpu_after=cpu_after,
        ),
    )


async def settle(procs: list[LoadProc], accepted: int, within: float) -> float | None:
    """Wait until the apps have as many distinct messages as were accepted; seconds waited
    (None: still short after ``within``)."""
    start = time.monotonic()
    while time.monotonic() - start < within:
        counted = await asyncio.gather(*(p.call(Count(), Counted) for p in procs))
        if sum(c.received for c in counted) >= accepted:
            return round(time.monotonic() - start, 1)
        await asyncio.sleep(0.5)
    return None


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    runner.raise_fd_limit()
    run = runner.stamp()
    json_path = a.json or runner.RESULTS / f"nodeloss-{run}.json"
    doc = runner.header("nodeloss", a.label, vars(a))
    api_key, secret = secrets.token_urlsafe(24), secrets.token_urlsafe(32)
    redis = redisproc.start()
    log(f"redis-server pid {redis.pid} on {redis.url}")
    nodes: list[server.StartedServer] = []
    try:
        nodes = start_nodes(a, redis.url, api_key, secret, json_path)
        for i, node in enumerate(nodes):
            log(f"node {i}: pid {node.pid}, {node.client_url}, {node.internal_urls[0]}")
        doc["nodes"] = [{"pid": n.pid, "command": n.command} for n in nodes]
        doc["redis_pid"] = redis.pid
        doc["load_before_run"] = os.getloadavg()
        result = asyncio.run(scenario(a, run, nodes, api_key, secret, redis.pid))
        doc["load_after_run"] = os.getloadavg()
    finally:
        for node in nodes:
            node.stop(15.0)
        redis.stop()
    rows = nodeloss_figures.rows(a, result)
    doc["result"] = result
    doc["table"] = rows_json(rows)
    notes = [
        (
            "disturbed: the machine (2 cores) is shared with other work; nodes, Redis, the "
            "clients and the publisher all run on the same CPUs"
        ),
        f"load average before / after: {doc['load_before_run']} / {doc['load_after_run']}",
    ]
    doc["notes"] = notes
    write_json(json_path, doc)
    print_table(
        f"pushsvc node loss · kill -9 of a node with {a.sessions:,} sessions · {a.nodes} nodes · "
        f"{a.rate:g} user msg/s",
        rows,
    )
    return finish(rows, notes, json_path, check=a.check)


if __name__ == "__main__":
    sys.exit(main())
