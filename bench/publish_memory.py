"""How much Redis memory one publish to many users costs.

Starts a redis-server of its own and publishes through the Redis broker (the same script a node
runs): one message of ``--data-kb`` KB of ``data`` to ``--users`` users, measuring Redis
``used_memory`` before and after. Three cases, each on a flushed server:

- ``new streams``: the users have no history yet (every stream is created by the publish);
- ``existing streams``: every user already has one small message (the usual case in a clinic);
- ``one copy per stream``: the same message appended to each user's stream on its own, which
  stores the whole message in every stream, as pushsvc did before bodies were stored once.

Then ``new streams`` again with Redis's ``stream-node-max-bytes`` at ``--small-node`` (256): Redis
7 preallocates ``min(4096, stream-node-max-bytes)`` bytes for the first node of every new
stream, which is most of what a new stream costs whatever the message.

Prints a table and writes JSON (``--out``, default ``bench/results/publish_memory.json``)::

    python -m bench.publish_memory --users 1000 --data-kb 60
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from bench import redisproc
from bench.provenance import git_state
from bench.report import Row, print_table, write_json
from pushsvc.broker.base import Publication
from pushsvc.broker.redis import RedisBroker
from pushsvc.brokers import redis_broker
from pushsvc.node.publish import new_id
from pushsvc.settings import Settings
from pushsvc.types import Message

ROOT = Path(__file__).resolve().parent.parent
TARGET = 1 << 20  # bytes: "well under 1 MB" for 60 KB to 1,000 users


def message(data_kb: int) -> Message:
    now = int(time.time() * 1000)
    data = msgspec.json.encode({"report": "x" * (data_kb * 1000)})
    return Message(new_id(now), "lab.result", msgspec.Raw(data), now, True, now + 86_400_000)


async def measure(
    setup: Callable[[RedisBroker], Awaitable[None]],
    publish: Callable[[RedisBroker], Awaitable[None]],
    node_bytes: int = 4096,
) -> int:
    """``used_memory`` growth of ``publish`` after ``setup``, on a new server whose
    ``stream-node-max-bytes`` is ``node_bytes`` (the publish script loaded before)."""
    redis = redisproc.start()
    broker = redis_broker(Settings(redis_url=redis.url, node_id="bench"))
    try:
        await broker._parts.control.call("CONFIG", "SET", "stream-node-max-bytes", node_bytes)
        await broker.publish([Publication(message(0), ["user:warm-up"])], "bench")
        await setup(broker)
        before = int(redis.info("memory")["used_memory"])
        await publish(broker)
        after = int(redis.info("memory")["used_memory"])
        return after - before
    finally:
        await broker.close()
        redis.stop()


async def run(users: int, data_kb: int, small_node: int) -> dict[str, int]:
    streams = [f"user:bench-{i}" for i in range(users)]
    big = message(data_kb)

    async def nothing(_: RedisBroker) -> None:
        return None

    async def small_first(broker: RedisBroker) -> None:
        await broker.publish([Publication(message(0), [s]) for s in streams], "bench")

    async def once(broker: RedisBroker) -> None:
        (placed,) = await broker.publish([Publication(big, streams)], "bench")
        assert not isinstance(placed, Exception), placed

    async def per_stream(broker: RedisBroker) -> None:
        await broker.publish([Publication(big, [s]) for s in streams], "bench")

    return {
        "new streams": await measure(nothing, once),
        "existing streams": await measure(small_first, once),
        "one copy per stream": await measure(small_first, per_stream),
        f"new streams, stream-node-max-bytes {small_node}": await measure(
            nothing, once, small_node
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--data-kb", type=int, default=60)
    parser.add_argument("--small-node", type=int, default=256)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/publish_memory.json")
    args = parser.parse_args()
    growth = asyncio.run(run(args.users, args.data_kb, args.small_node))
    redis_version = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    title = f"Redis used_memory growth: one publish of {args.data_kb} KB data to {args.users} users"
    rows = []
    for case, grown in growth.items():
        stored_once = case != "one copy per stream"
        rows.append(Row(
            metric=case, value=f"{grown / 1e6:.3f} MB",
            target=f"< {TARGET / 1e6:.2f} MB" if stored_once else "",
            met=grown < TARGET if stored_once else None,
        ))  # fmt: skip
    print_table(title, rows)
    doc: dict[str, object] = {
        "benchmark": "publish_memory",
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "redis": redis_version,
        "git": git_state(ROOT),
        "users": args.users,
        "data_kb": args.data_kb,
        "used_memory_growth_bytes": growth,
    }
    write_json(args.out, doc)
    print(msgspec.json.encode(doc).decode())


if __name__ == "__main__":
    main()
