"""Escalation at scale: N patients offline, one escalating message each.

Starts its own ``redis-server`` and one node (``--dev``, a fresh VAPID key, webhooks to a local
receiver), seeds one push subscription per patient in the broker, publishes one message per
patient with ``push.after`` (batches of 1,000), and serves as the push service and the webhook
receiver itself (a minimal asyncio HTTP/1.1 server answering 201 / 200 on kept-alive
connections). It reports:

- pushes received, and how late each came after its deadline (publish time from the message id
  + ``after``): p50, p99, max, and how many came more than 60 s late or before the deadline;
- pushes received twice for one message (the ``Topic`` header is the message id): must be 0;
- node CPU (utime+stime) and Redis commands (``total_commands_processed``) per escalation, over
  the window from the first deadline to the last push (with ``--no-webhooks`` for pushes alone);
- webhook deliveries per second at the receiver (``message.unacked``, one per patient).

    .venv/bin/python -m bench.escalation -n 10000 --after 30
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric import ec

from bench import procstat, redisproc
from bench import server as node_server
from pushsvc.broker.base import Subscription
from pushsvc.brokers import redis_broker
from pushsvc.push import ece, vapid
from pushsvc.settings import Settings

API_KEY = "bench-key"


class Sink:
    """The push service and the webhook receiver: counts what arrives, answers at once."""

    def __init__(self) -> None:
        self.pushes: list[tuple[float, str]] = []  # (arrived, topic)
        self.hooks: list[tuple[float, str]] = []  # (arrived, event id)
        self.port = 0
        self.want = (0, 0)  # (pushes, webhooks) to wait for
        self.done = asyncio.Event()
        self.writers: set[asyncio.StreamWriter] = set()

    def close(self) -> None:
        """Close every connection (their handlers end with the read that fails)."""
        for writer in self.writers:
            writer.close()
        self.writers.discard(writer)

    async def start(self) -> asyncio.Server:
        srv = await asyncio.start_server(self._serve, "127.0.0.1", 0, backlog=1024)
        self.port = srv.sockets[0].getsockname()[1]
        return srv

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split(" ")[1]
                headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (line.partition(":") for line in lines[1:] if line)
                }
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                now = time.time()
                if path.startswith("/push/"):
                    self.pushes.append((now, headers.get("topic", "")))
                    writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
                else:
                    self.hooks.append((now, json.loads(body)["id"]))
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                if len(self.pushes) >= self.want[0] and len(self.hooks) >= self.want[1]:
                    self.done.set()
        writer.close()


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def seed(redis_url: str, n: int, endpoint: str) -> None:
    """One subscription per patient, written through the broker interface."""
    broker = redis_broker(Settings(redis_url=redis_url, node_id="bench-seed"))
    point = ece.public_bytes(ec.generate_private_key(ec.SECP256R1()).public_key())
    browser_key = ece.b64encode(point)
    now = time.time()
    try:
        for start in range(0, n, 500):
            await asyncio.gather(*(
                broker.escalations.subscribe(
                    f"p{i}", "phone",
                    Subscription(endpoint=f"{endpoint}/push/p{i}", p256dh=browser_key,
                                 auth=ece.b64encode(bytes(16)), seen=now),
                )
                for i in range(start, min(n, start + 500))
            ))  # fmt: skip
    finally:
        await broker.close()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    sink = Sink()
    listener = await sink.start()
    origin = f"http://127.0.0.1:{sink.port}"
    redis = redisproc.start()
    work = Path(args.out).parent
    work.mkdir(parents=True, exist_ok=True)
    key_path = work / "bench-vapid.pem"
    key_path.write_text(vapid.generate()[0])
    env = {
        "PUSHSVC_REDIS_URL": redis.url,
        "PUSHSVC_API_KEYS": API_KEY,
        "PUSHSVC_TOKEN_SECRET": "bench-" + "s" * 40,
        "PUSHSVC_VAPID_PRIVATE_KEY": str(key_path),
        "PUSHSVC_VAPID_SUBJECT": "mailto:bench@pushsvc.example",
        "PUSHSVC_LOG_LEVEL": "WARNING",
    }
    if not args.no_webhooks:
        env |= {"PUSHSVC_WEBHOOK_URLS": f"{origin}/hooks", "PUSHSVC_WEBHOOK_SECRET": "w" * 32}
    node = node_server.start(args.node_cmd, env, [], work / "bench-escalation-node.log", [])
    try:
        await node_server.wait_ready(node, 30)
        await seed(redis.url, args.n, origin)
        api = node.internal_urls[0]
        t_publish = time.time()
        async with httpx.AsyncClient(
            base_url=api, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60
        ) as client:
            for start in range(0, args.n, 1000):
                messages = [
                    {"to": {"users": [f"p{i}"]}, "event": "queue.called", "data": {"room": i},
                     "ttl": 3600, "push": {"after": args.after, "title": "Your turn"}}
                    for i in range(start, min(args.n, start + 1000))
                ]  # fmt: skip
                r = await client.post("/v1/messages/batch", json={"messages": messages})
                r.raise_for_status()
        published = time.time() - t_publish
        first_deadline = t_publish + args.after
        await asyncio.sleep(max(0.0, first_deadline - time.time() - 0.5))
        cpu0 = procstat.cpu_seconds(node.proc.pid)
        cmds0 = int(redis.info("stats").get("total_commands_processed", 0))
        t0 = time.time()
        sink.want = (args.n, 0 if args.no_webhooks else args.n)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(sink.done.wait(), args.after + 180)
        t1 = time.time()
        cpu = procstat.cpu_seconds(node.proc.pid) - cpu0
        commands = int(redis.info("stats").get("total_commands_processed", 0)) - cmds0
        await asyncio.sleep(2)  # anything sent twice would come now
    finally:
        node.stop()
        redis.stop()
        listener.close()
        sink.close()
        await asyncio.sleep(0.1)
    topics = Counter(topic for _, topic in sink.pushes)
    late = [at - (int(topic[:12], 16) / 1000 + args.after) for at, topic in sink.pushes if topic]
    hook_times = [at for at, _ in sink.hooks]
    hook_rate = (
        len(hook_times) / (max(hook_times) - min(hook_times)) if len(hook_times) > 1 else 0.0
    )
    result = {
        "patients": args.n,
        "after_s": args.after,
        "publish_s": round(published, 2),
        "pushes_received": len(sink.pushes),
        "messages_pushed": len(topics),
        "pushed_twice": sum(1 for c in topics.values() if c > 1),
        "late_p50_s": round(quantile(late, 0.5), 3),
        "late_p99_s": round(quantile(late, 0.99), 3),
        "late_max_s": round(max(late), 3) if late else None,
        "early": sum(1 for x in late if x < 0),
        "over_60s_late": sum(1 for x in late if x > 60),
        "window_s": round(t1 - t0, 2),
        "node_cpu_ms_per_escalation": round(1000 * cpu / max(1, len(topics)), 3),
        "redis_commands_per_escalation": round(commands / max(1, len(topics)), 2),
        "webhooks_received": len(sink.hooks),
        "webhooks_distinct": len({e for _, e in sink.hooks}),
        "webhooks_per_s": round(hook_rate, 1),
        "machine": procstat.machine_info(),
    }
    if late:
        result["late_mean_s"] = round(statistics.fmean(late), 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=10_000, help="patients (one message each)")
    parser.add_argument("--after", type=int, default=30, help="push.after, seconds")
    parser.add_argument("--no-webhooks", action="store_true", help="pushes only")
    parser.add_argument("--out", default="bench/results/escalation.json")
    parser.add_argument(
        "--node-cmd",
        default="{python} -m cli serve --port {port} --internal-port {internal_port}",
        help="how to start the node ({python}, {port}, {internal_port} are filled in)",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    Path(args.out).write_text(json.dumps(result, indent=2))
    width = max(len(k) for k in result)
    for k, v in result.items():
        if k != "machine":
            print(f"{k:<{width}}  {v}")
    missed = (
        result["messages_pushed"] < args.n
        or result["pushed_twice"]
        or result["over_60s_late"]
        or result["early"]
    )
    if args.check and missed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
