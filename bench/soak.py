"""Soak the monitor: a real two-node cluster, Alertmanager and ``pushsvc monitor``, under load.

    .venv/bin/python -m bench.soak --duration 600 --rate 200 --restart-every 120 --drills
    .venv/bin/python -m bench.soak --commands --rate 2000 --duration 30 [--baseline DIR]

Soak mode: devices (one WebSocket each, acking everything, resuming on the other node when a
connection ends) receive ``--rate`` messages per second published through both nodes' API while
the nodes are restarted one after the other every ``--restart-every`` seconds (SIGTERM: drain,
clients resume elsewhere). Every second the benchmark lists Alertmanager's alerts: any alert in a
clean run is a false alert. With ``--drills`` it then injects the game-day faults and measures
the time to PushDeliveryLoss (1 delivery in 1,000 dropped on one node) and to PushNodeStalled (one
node's bus stopped), and to their resolution once cleared.

Commands mode: the same load at ``--rate`` without restarts, monitor or Alertmanager; Redis
``INFO commandstats`` before and after give the commands per delivered message. ``--baseline DIR``
runs the nodes from another source tree (e.g. ``git archive <commit>`` unpacked) for an A/B.

Prints a table and writes JSON to ``bench/results/``. Everything listens on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
KEY = "soak-key-" + "k" * 24
SECRET = "soak-secret-" + "s" * 40
NODE = {
    "registry_interval": 1, "ack_timeout": 2, "max_attempts": 3, "heartbeat": 10,
    "drain_timeout": 5, "client_frame_rate": 10_000, "client_frame_burst": 10_000,
}  # fmt: skip
MONITOR = {
    "ack_timeout": 2, "max_attempts": 3, "monitor_interval": 1, "monitor_grace": 3,
    "reconnect_window": 5, "late_check": 5, "loss_window": 30, "canary_interval": 1,
    "canary_stall": 10, "alert_resend": 5, "lease_ttl": 5,
}  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ready(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.1)


@dataclass
class Proc:
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def spawn(args: list[str], env: dict[str, Any], name: str, cwd: Path = ROOT) -> Proc:
    child = {k: v for k, v in os.environ.items() if not k.startswith("PUSHSVC_")}
    child.update({f"PUSHSVC_{k.upper()}": str(v) for k, v in env.items()})
    log = Path(tempfile.mkstemp(prefix=f"soak-{name}-", suffix=".log")[1])
    with log.open("wb") as out:
        proc = subprocess.Popen(args, env=child, stdout=out, stderr=out, cwd=cwd)
    return Proc(proc, log)


@dataclass
class Node:
    node_id: str
    port: int
    internal_port: int
    redis_url: str
    source: Path
    faults: bool = True  # start with --enable-fault-injection (a baseline tree may not know it)
    proc: Proc | None = None

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.internal_port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def start(self) -> None:
        env = {"redis_url": self.redis_url, "node_id": self.node_id, "port": self.port,
               "internal_port": self.internal_port, "api_keys": KEY, "token_secret": SECRET,
               "log_level": "WARNING", **NODE}  # fmt: skip
        args = [sys.executable, "-m", "cli", "serve"]
        args += ["--enable-fault-injection"] if self.faults else []
        self.proc = spawn(args, env, self.node_id, self.source)
        wait(lambda: ready(self.api + "/readyz"), 30, f"{self.node_id} ready")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


@contextlib.contextmanager
def redis_server() -> Iterator[tuple[str, int]]:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="soak-redis-") as tmp:
        proc = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait(lambda: _ping(port), 10, "redis")
            yield f"redis://127.0.0.1:{port}/0", port
        finally:
            proc.terminate()
            proc.wait(10)


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def redis_commands(port: int) -> dict[str, int]:
    """``INFO commandstats`` calls by command."""
    out = subprocess.run(["redis-cli", "-p", str(port), "INFO", "commandstats"],
                         capture_output=True, check=True, text=True).stdout  # fmt: skip
    calls = {}
    for line in out.splitlines():
        if line.startswith("cmdstat_"):
            name, _, stats = line.partition(":")
            calls[name[8:]] = int(stats.split(",")[0].split("=")[1])
    return calls


@contextlib.contextmanager
def alertmanager() -> Iterator[str]:
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if binary is None:
        raise SystemExit("prometheus-alertmanager is not installed")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="soak-am-") as tmp:
        config = Path(tmp) / "am.yml"
        config.write_text("route:\n  receiver: nobody\nreceivers:\n  - name: nobody\n")
        proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.path={tmp}/data",
             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            wait(lambda: ready(url + "/-/ready"), 15, "alertmanager")
            yield url
        finally:
            proc.terminate()
            proc.wait(10)


@dataclass
class Device:
    user: str
    token: str
    urls: list[str]
    received: set[str] = field(default_factory=set)
    offsets: dict[str, str] = field(default_factory=dict)
    connections: int = 0

    async def run(self) -> None:
        for i in range(1 << 30):
            url = self.urls[i % len(self.urls)]
            try:
                async with connect(url, compression=None, open_timeout=5) as ws:
                    hello = {"type": "hello", "token": self.token, "device": self.user,
                             "resume": self.offsets}  # fmt: skip
                    await ws.send(json.dumps(hello))
                    self.connections += 1
                    async for raw in ws:
                        await self._frame(ws, json.loads(raw))
            except (OSError, ConnectionClosed, InvalidHandshake, TimeoutError):
                await asyncio.sleep(0.05)

    async def _frame(self, ws: Any, frame: dict[str, Any]) -> None:
        kind = frame["type"]
        if kind == "ping":
            await ws.send('{"type":"pong"}')
        elif kind == "msg":
            self.received.add(frame["id"])
            if frame["ack"]:
                await ws.send(json.dumps({"type": "ack", "ids": [frame["id"]]}))
            old = self.offsets.get(frame["stream"])
            if old is None or _pos(frame["offset"]) > _pos(old):
                self.offsets[frame["stream"]] = frame["offset"]


def _pos(offset: str) -> tuple[int, int]:
    ms, _, seq = offset.partition("-")
    return int(ms), int(seq)


@dataclass
class Load:
    nodes: list[Node]
    users: list[str]
    rate: float
    published: list[str] = field(default_factory=list)
    refused: int = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Publish ``rate`` messages per second in batches every 100 ms through the nodes."""
        tick = 0.1
        carry = 0.0
        async with httpx.AsyncClient(timeout=10, headers={"Authorization": f"Bearer {KEY}"}) as h:
            turn = 0
            next_at = time.monotonic()
            while not stop.is_set():
                carry += self.rate * tick
                n, carry = int(carry), carry - int(carry)
                if n:
                    body = {"messages": [
                        {"to": {"users": [random.choice(self.users)]}, "event": "soak",
                         "data": {"t": time.time()}, "ttl": 3600} for _ in range(n)
                    ]}  # fmt: skip
                    for attempt in range(len(self.nodes) * 3):
                        node = self.nodes[(turn + attempt) % len(self.nodes)]
                        try:
                            r = await h.post(node.api + "/v1/messages/batch", json=body)
                        except httpx.HTTPError:
                            r = None
                        if r is not None and r.status_code == 202:
                            self.published += [x["id"] for x in r.json()["results"]]
                            break
                        self.refused += 1
                        await asyncio.sleep(0.05)
                    turn += 1
                next_at += tick
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))


async def tokens(node: Node, users: list[str]) -> dict[str, str]:
    out = {}
    async with httpx.AsyncClient(timeout=10, headers={"Authorization": f"Bearer {KEY}"}) as h:
        for user in users:
            r = await h.post(node.api + "/v1/tokens", json={"user": user, "ttl": 86_400})
            out[user] = r.json()["token"]
    return out


@contextlib.asynccontextmanager
async def fleet(nodes: list[Node], count: int, prefix: str = "soak") -> AsyncIterator[list[Device]]:
    users = [f"{prefix}{i}" for i in range(count)]
    minted = await tokens(nodes[0], users)
    devices = [
        Device(u, minted[u], [n.ws for n in nodes[i % 2 :] + nodes[: i % 2]])
        for i, u in enumerate(users)
    ]
    tasks = [asyncio.create_task(d.run()) for d in devices]
    deadline = time.monotonic() + 30
    while not all(d.connections for d in devices) and time.monotonic() < deadline:  # noqa: ASYNC110 - polls the devices' progress
        await asyncio.sleep(0.1)
    try:
        yield devices
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@dataclass
class AlertLog:
    url: str
    seen: dict[tuple[str, str], float] = field(default_factory=dict)  # first seen
    resolved: dict[tuple[str, str], float] = field(default_factory=dict)
    active: set[tuple[str, str]] = field(default_factory=set)

    async def watch(self, stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(timeout=5) as h:
            while not stop.is_set():
                with contextlib.suppress(httpx.HTTPError):
                    r = await h.get(self.url + "/api/v2/alerts")
                    now = time.monotonic()
                    current = {(a["labels"]["alertname"], a["labels"].get("node", ""))
                               for a in r.json()}  # fmt: skip
                    for key in current - self.active:
                        self.seen.setdefault(key, now)
                    for key in self.active - current:
                        self.resolved[key] = now
                    self.active = current
                await asyncio.sleep(0.5)

    async def first(self, key: tuple[str, str], since: float, within: float) -> float | None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if key in self.active and self.seen.get(key, 0) >= since:
                return self.seen[key] - since
            await asyncio.sleep(0.2)
        return None

    async def gone(self, key: tuple[str, str], since: float, within: float) -> float | None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if key not in self.active:
                return time.monotonic() - since
            await asyncio.sleep(0.2)
        return None


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    with redis_server() as (redis_url, _), alertmanager() as am_url:
        nodes = [Node(f"soak-{n}", free_port(), free_port(), redis_url, ROOT) for n in "ab"]
        for n in nodes:
            n.start()
        monitor = spawn(
            [sys.executable, "-m", "cli", "monitor"],
            {"redis_url": redis_url, "alertmanager_url": am_url, "api_keys": KEY,
             "monitor_port": free_port(), "log_level": "INFO", **MONITOR}, "monitor",
        )  # fmt: skip
        try:
            return await _soak(args, nodes, am_url, monitor)
        finally:
            monitor.stop()
            for n in nodes:
                n.stop()


async def _soak(
    args: argparse.Namespace, nodes: list[Node], am: str, monitor: Proc
) -> dict[str, Any]:
    log = AlertLog(am)
    stop_all = asyncio.Event()
    watcher = asyncio.create_task(log.watch(stop_all))
    result: dict[str, Any] = {
        "mode": "soak", "rate": args.rate, "duration": args.duration,
        "restart_every": args.restart_every, "devices": args.devices,
    }  # fmt: skip
    async with fleet(nodes, args.devices) as devices:
        load = Load(nodes, [d.user for d in devices], args.rate)
        stop_load = asyncio.Event()
        publisher = asyncio.create_task(load.run(stop_load))
        started = time.monotonic()
        restarts = 0
        next_restart = started + args.restart_every
        while time.monotonic() - started < args.duration:
            await asyncio.sleep(1)
            if args.restart_every and time.monotonic() >= next_restart:
                node = nodes[restarts % len(nodes)]
                await asyncio.to_thread(node.stop)
                await asyncio.to_thread(node.start)
                restarts += 1
                next_restart += args.restart_every
        stop_load.set()
        await publisher
        settle = MONITOR["ack_timeout"] * MONITOR["max_attempts"] + MONITOR["reconnect_window"]
        await asyncio.sleep(settle + MONITOR["monitor_grace"] + MONITOR["late_check"] + 10)
        false_alerts = sorted(f"{a}/{n}" for a, n in log.seen)
        missing = len(set(load.published) - set().union(*(d.received for d in devices)))
        result |= {
            "published": len(load.published), "refused_publishes": load.refused,
            "restarts": restarts, "reconnects": sum(d.connections - 1 for d in devices),
            "not_received": missing, "false_alerts": false_alerts,
        }  # fmt: skip
        if args.drills:
            result |= await drills(nodes, devices, log)
    stop_all.set()
    await watcher
    result["monitor_log_tail"] = monitor.log.read_text(errors="replace").splitlines()[-5:]
    return result


async def drills(nodes: list[Node], devices: list[Device], log: AlertLog) -> dict[str, Any]:
    a, b = nodes
    out: dict[str, Any] = {}
    async with (
        httpx.AsyncClient(timeout=10, headers={"Authorization": f"Bearer {KEY}"}) as h,
        fleet([a], len(devices) // 2, prefix="drill") as on_a,
    ):
        # loss: 1 in 1,000 dropped on node a (devices connected to it), at 200 msg/s
        load = Load([b], [d.user for d in on_a], 200)
        stop = asyncio.Event()
        (
            await h.post(a.api + "/v1/admin/faults", json={"drop_deliveries": 0.001})
        ).raise_for_status()
        publisher = asyncio.create_task(load.run(stop))
        while not any(zlib.crc32(m.encode()) / 2**32 < 0.001 for m in load.published):  # noqa: ASYNC110 - polls the publisher's progress
            await asyncio.sleep(0.1)
        first_drop = time.monotonic()
        out["loss_detect_s"] = await log.first(("PushDeliveryLoss", a.node_id), first_drop, 120)
        (await h.delete(a.api + "/v1/admin/faults")).raise_for_status()
        cleared = time.monotonic()
        out["loss_resolve_s"] = await log.gone(("PushDeliveryLoss", a.node_id), cleared, 180)
        stop.set()
        await publisher
        # stall: node b's bus stopped
        (await h.post(b.api + "/v1/admin/faults", json={"stop_bus": True})).raise_for_status()
        stopped = time.monotonic()
        out["stall_detect_s"] = await log.first(("PushNodeStalled", b.node_id), stopped, 60)
        (await h.delete(b.api + "/v1/admin/faults")).raise_for_status()
        cleared = time.monotonic()
        out["stall_resolve_s"] = await log.gone(("PushNodeStalled", b.node_id), cleared, 60)
    return out


async def commands(args: argparse.Namespace) -> dict[str, Any]:
    source = Path(args.baseline) if args.baseline else ROOT
    with redis_server() as (redis_url, port):
        nodes = [Node(f"cmd-{n}", free_port(), free_port(), redis_url, source, False) for n in "ab"]
        for n in nodes:
            n.start()
        try:
            async with fleet(nodes, args.devices) as devices:
                await asyncio.sleep(2)
                before = redis_commands(port)
                received = sum(len(d.received) for d in devices)
                load = Load(nodes, [d.user for d in devices], args.rate)
                stop = asyncio.Event()
                publisher = asyncio.create_task(load.run(stop))
                await asyncio.sleep(args.duration)
                stop.set()
                await publisher
                await asyncio.sleep(3)  # the last acks and flushes
                after = redis_commands(port)
                delivered = sum(len(d.received) for d in devices) - received
        finally:
            for n in nodes:
                n.stop()
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    delta = {k: v for k, v in sorted(delta.items()) if v}
    total = sum(delta.values())
    return {
        "mode": "commands", "source": str(source), "rate": args.rate, "duration": args.duration,
        "published": len(load.published), "delivered": delivered,
        "achieved_rate": round(len(load.published) / args.duration, 1),
        "commands": total, "per_delivered": round(total / max(1, delivered), 3),
        "by_command_per_delivered": {k: round(v / max(1, delivered), 3) for k, v in delta.items()},
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=600, help="seconds of load [600]")
    parser.add_argument("--rate", type=float, default=200, help="messages per second [200]")
    parser.add_argument("--devices", type=int, default=50, help="devices (one per user) [50]")
    parser.add_argument("--restart-every", type=float, default=120, help="s between restarts [120]")
    parser.add_argument(
        "--drills", action="store_true", help="then measure loss and stall detection"
    )
    parser.add_argument("--commands", action="store_true", help="Redis commands per delivery")
    parser.add_argument("--baseline", help="with --commands: run the nodes from this source tree")
    parser.add_argument("--output", help="JSON file [bench/results/soak-<mode>.json]")
    args = parser.parse_args()
    result = asyncio.run(commands(args) if args.commands else soak(args))
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = Path(args.output or RESULTS / f"soak-{result['mode']}.json")
    path.write_text(json.dumps(result, indent=2))
    width = max(len(k) for k in result)
    for key, value in result.items():
        if key != "monitor_log_tail":
            print(f"{key:<{width}}  {value}")
    print(f"-> {path}")


if __name__ == "__main__":
    main()
