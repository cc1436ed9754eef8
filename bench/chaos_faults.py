"""The faults of a campaign: a schedule drawn from the seed, injected one after the other.

:func:`schedule` is pure: the same seed, duration, node count and fault list give the same
faults, targets and parameters (the times they really start at can drift when an earlier fault
took longer than its slot, e.g. a node slow to restart). :class:`Injector` applies each one and
puts everything back before the next: every node is running and Redis answers in between.

Fault classes (``--faults``):

====================  ===========================================================================
``kill``              SIGKILL a node, start it again
``term``              SIGTERM a node (drain: sessions closed with 1001), start it again
``pubsub``            ``CLIENT KILL TYPE pubsub``: every node's bus subscription is cut
``redis-restart``     SIGTERM redis-server (append-only file: history survives), down 0.5 to 2 s
``redis-freeze``      SIGSTOP redis-server for 1 to 3 s, then SIGCONT
``maxmemory``         ``CONFIG SET maxmemory`` below the used memory for 2 to 4 s (writes refused)
``skew``              restart a node under libfaketime with its wall clock ±30 s off
``garbage``           XADD an undecodable entry to a user's stream, then drain that user's first
                      device's node so its devices resume through the entry
``drop``              the node's ``drop_deliveries`` fault (30 % of messages) for 6 to 9 s: the
                      deliberate losses the monitor must report
``failover``          (``--redis sentinel|cluster`` only) SIGKILL the master (on Cluster: of the
                      keyspace's slot), wait for the promotion, start it again as a replica
====================  ===========================================================================

On Sentinel and Cluster the Redis faults (``redis-restart``, ``redis-freeze``, ``maxmemory``,
``garbage``) aim at the current master; ``pubsub`` cuts the subscriptions on every data process.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from bench.chaos_cluster import KEY, ChaosNode
from pushsvc.broker.keys import Keyspace

FAULTS = (
    "kill",
    "term",
    "pubsub",
    "redis-restart",
    "redis-freeze",
    "maxmemory",
    "skew",
    "garbage",
    "drop",
)
FAILOVER_FAULTS = ("failover",)  # only where Redis has replicas to promote
ALL_FAULTS = FAULTS + FAILOVER_FAULTS
DROP_FRACTION = 0.3
GARBAGE = "\xff{not json"


@dataclass
class Fault:
    at: float  # seconds after the load started, as scheduled
    kind: str
    target: int  # node index (user index for ``garbage``)
    param: float  # seconds down or frozen, skew seconds, window length
    started: float | None = None  # seconds after the load started, as it happened
    took: float | None = None
    outcome: str = ""
    window: tuple[float, float] | None = None  # drop: unix s the fault was on
    node_id: str = ""
    began: float | None = None  # time.monotonic() it started at
    killed_at: float | None = None  # failover: time.monotonic() the master was killed
    failover: dict[str, Any] | None = None  # failover: addresses, promotion, refusal window

    def row(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "kind": self.kind,
            "target": self.target,
            "param": self.param,
            "started": self.started,
            "took": self.took,
            "outcome": self.outcome,
            "node": self.node_id,
            "window": self.window,
            "failover": self.failover,
        }


def schedule(
    seed: int, duration: float, nodes: int, users: int, kinds: list[str], every: float
) -> list[Fault]:
    """Faults every ``every`` s from ``every`` s on, until ``duration - every``: first each of
    ``kinds`` once in a seeded order, then seeded choices."""
    rng = random.Random(seed)
    order = list(kinds)
    rng.shuffle(order)
    out: list[Fault] = []
    t = every
    while kinds and t <= duration - every:
        kind = order.pop(0) if order else rng.choice(kinds)
        target = rng.randrange(users if kind == "garbage" else nodes)
        param = {
            "redis-restart": rng.uniform(0.5, 2.0),
            "redis-freeze": rng.uniform(1.0, 3.0),
            "maxmemory": rng.uniform(2.0, 4.0),
            "skew": rng.choice((-30.0, 30.0)),
            "drop": rng.uniform(6.0, 9.0),
        }.get(kind, 0.0)
        out.append(Fault(round(t, 1), kind, target, round(param, 2)))
        t += every
    return out


class RedisUnderTest(Protocol):
    """What the faults need of Redis: :class:`bench.chaos_cluster.ChaosRedis` or a topology of
    :mod:`bench.chaos_topology` (whose faults aim at the current master)."""

    def cli(self, *args: str) -> str: ...
    def cli_key(self, key: str, *args: str) -> str: ...
    def used_memory(self) -> int: ...
    def kill_pubsub(self) -> str: ...
    def keyspace(self) -> Keyspace: ...
    def restart(self, down_for: float) -> None: ...
    def freeze(self) -> None: ...
    def thaw(self) -> None: ...
    def repair(self) -> None: ...
    def failover(self) -> dict[str, float | str]: ...


@dataclass
class Injector:
    redis: RedisUnderTest
    nodes: list[ChaosNode]
    users: list[str]
    first_node_of: dict[str, int]  # user -> index of the node of its first device
    done: list[Fault] = field(default_factory=list)

    async def run(self, faults: list[Fault], started: float, stop: asyncio.Event) -> None:
        for fault in faults:
            delay = started + fault.at - time.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
            if stop.is_set():
                return
            fault.began = time.monotonic()
            fault.started = round(fault.began - started, 1)
            try:
                fault.outcome = await self.inject(fault) or "ok"
            except Exception as exc:  # a fault that cannot be undone is a finding
                fault.outcome = f"error: {exc!r}"[:200]
                try:
                    await asyncio.to_thread(self.repair)
                except Exception as again:  # recorded: the next fault goes on
                    fault.outcome += f"; repair: {again!r}"[:200]
            fault.took = round(time.monotonic() - started - fault.started, 1)
            self.done.append(fault)

    async def inject(self, f: Fault) -> str:
        node = self.nodes[f.target % len(self.nodes)]
        f.node_id = node.node_id
        match f.kind:
            case "kill" | "term":
                sig = signal.SIGKILL if f.kind == "kill" else signal.SIGTERM
                await asyncio.to_thread(node.stop, sig)
                exit_status = node.exits[-1]
                await asyncio.to_thread(node.start)
                return f"exit {exit_status}"
            case "skew":
                await asyncio.to_thread(node.stop, signal.SIGTERM)
                await asyncio.to_thread(node.start, f.param)
                return f"exit {node.exits[-1]}, restarted {f.param:+g} s"
            case "pubsub":
                killed = await asyncio.to_thread(self.redis.kill_pubsub)
                return f"{killed} killed"
            case "failover":
                done = await asyncio.to_thread(self.redis.failover)
                f.killed_at = float(done.pop("killed_at"))
                f.failover = done
                f.node_id = str(done["old"]).rpartition(":")[2]
                return (
                    f"{done['old']} killed, {done['new']} promoted after {done['promoted_s']} s, "
                    f"whole after {done['whole_s']} s"
                )
            case "redis-restart":
                await asyncio.to_thread(self.redis.restart, f.param)
            case "redis-freeze":
                self.redis.freeze()
                await asyncio.sleep(f.param)
                self.redis.thaw()
            case "maxmemory":
                used = await asyncio.to_thread(self.redis.used_memory)
                limit = max(1 << 20, used // 2)
                await asyncio.to_thread(self.redis.cli, "CONFIG", "SET", "maxmemory", str(limit))
                try:
                    await asyncio.sleep(f.param)
                finally:
                    await asyncio.to_thread(self.redis.cli, "CONFIG", "SET", "maxmemory", "0")
                return f"maxmemory {limit} (used {used})"
            case "garbage":
                user = self.users[f.target % len(self.users)]
                key = self.redis.keyspace().stream(f"user:{user}")
                entry = await asyncio.to_thread(
                    self.redis.cli_key, key, "XADD", key, "*", "m", GARBAGE
                )
                node = self.nodes[self.first_node_of[user]]
                f.node_id = node.node_id
                await asyncio.to_thread(node.stop, signal.SIGTERM)
                await asyncio.to_thread(node.start)
                return f"{user} entry {entry}"
            case "drop":
                return await self._drop(node, f)
            case _:
                raise ValueError(f"unknown fault {f.kind!r}")
        return ""

    async def _drop(self, node: ChaosNode, f: Fault) -> str:
        url = node.api + "/v1/admin/faults"
        async with httpx.AsyncClient(timeout=10, headers={"Authorization": f"Bearer {KEY}"}) as h:
            on = time.time()
            (await h.post(url, json={"drop_deliveries": DROP_FRACTION})).raise_for_status()
            try:
                await asyncio.sleep(f.param)
            finally:
                (await h.delete(url)).raise_for_status()
                f.window = (on, time.time())
        return f"drop_deliveries {DROP_FRACTION}"

    def repair(self) -> None:
        """After a fault that failed half-way: Redis thawed and running, every node running."""
        self.redis.repair()
        for node in self.nodes:
            if node.proc is None or node.proc.poll() is not None:
                try:
                    node.start()
                except (RuntimeError, TimeoutError):
                    node.proc = None
