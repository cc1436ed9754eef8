"""The traffic of a fault campaign: patients' devices and hospital publishers.

A :class:`Device` is the project's own client (:class:`pushsvc.client.PushClient`: auto-ack,
resume, reconnect with backoff) on one node; it records every message it is handed and whether it
was addressed to it. A :class:`Publisher` is one caller: every message carries its own
idempotency key, and a 503, a 409 (the key is being published right now), a timeout or a refused
connection is retried with the same key and body, on the next node, until a 202 or ``give_up``
seconds. Every id any 202 returned is kept per key: more than one is a double id.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench.chaos_cluster import KEY, ChaosNode, caller_secret
from pushsvc.client import PushClient

TOPIC = "board"
RETRIED = (409, 503)
TOKEN_TTL = 43_200  # s: campaigns of hours keep their tokens (the usual cap on lifetimes)


@dataclass
class Device:
    """One device of ``user`` on ``node``; ``topics`` are in its token."""

    user: str
    name: str
    node: str  # node id
    url: str
    token: str
    topics: tuple[str, ...] = ()
    received: dict[str, float] = field(default_factory=dict)  # id -> when (unix s)
    misrouted: list[tuple[str, str]] = field(default_factory=list)  # (id, stream)
    keys: dict[str, str] = field(default_factory=dict)  # id -> the idempotency key in its data
    failure: str | None = None
    client: PushClient | None = None

    async def run(self) -> None:
        client = PushClient(self.url, self.token, self.name, backoff_base=0.1, backoff_cap=1.0)
        self.client = client
        async with client:
            try:
                async for msg in client:
                    self._take(msg.id, msg.stream, msg.data)
            except Exception as exc:  # the client ended for good: a finding
                self.failure = repr(exc)

    def _take(self, msg_id: str, stream: str, data: Any) -> None:
        self.received.setdefault(msg_id, time.time())
        to = data if isinstance(data, dict) else {}
        self.keys[msg_id] = caller_key(str(to.get("caller", "")), str(to.get("key", "")))
        kind, _, name = stream.partition(":")
        if kind == "user":
            ok = name == self.user and self.user in to.get("users", ())
        elif kind == "topic":
            ok = name in self.topics and name in to.get("topics", ())
        else:
            ok = stream == "all"
        if not ok:
            self.misrouted.append((msg_id, stream))

    @property
    def connections(self) -> int:
        return self.client.connections if self.client is not None else 0


def caller_key(caller: str, key: str) -> str:
    """An idempotency key as the cluster scopes it: per caller."""
    return f"{caller}/{key}"


@dataclass
class Sent:
    """One message a publisher accepted (202), by the first id it was given."""

    id: str
    caller: str
    key: str
    users: tuple[str, ...]
    topics: tuple[str, ...]
    at: float  # time.time() of the 202
    attempts: int


@dataclass
class Publisher:
    caller: str
    nodes: list[ChaosNode]
    users: list[str]
    rng: random.Random
    topic_share: float = 0.15
    give_up: float = 60.0
    accepted: list[Sent] = field(default_factory=list)
    ids_by_key: dict[str, set[str]] = field(default_factory=dict)
    statuses: Counter[str] = field(default_factory=Counter)
    abandoned: list[str] = field(default_factory=list)  # keys never answered 202
    latencies: list[float] = field(default_factory=list)  # s from first attempt to the 202
    odd: list[str] = field(default_factory=list)  # the first answers other than 202/409/503
    #: every attempt: (sent, answered) as time.monotonic(), and its status or exception name
    answers: list[tuple[float, float, str]] = field(default_factory=list)

    async def run(self, rate: float, stop: asyncio.Event) -> None:
        """Publish about ``rate`` messages per second, one at a time, until ``stop``."""
        seq = 0
        next_at = time.monotonic()
        auth = {"Authorization": f"Bearer {caller_secret(self.caller)}"}  # its own named key
        async with httpx.AsyncClient(timeout=5, headers=auth) as h:
            while not stop.is_set():
                seq += 1
                await self.publish(h, f"k{seq}")  # the same key strings for every caller
                next_at = max(next_at + self.rng.expovariate(rate), time.monotonic() - 1)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), max(0.0, next_at - time.monotonic()))

    async def publish(self, h: httpx.AsyncClient, key: str) -> None:
        if self.rng.random() < self.topic_share:
            users: tuple[str, ...] = ()
            topics: tuple[str, ...] = (TOPIC,)
            to: dict[str, Any] = {"topics": list(topics)}
        else:
            users = tuple(self.rng.sample(self.users, self.rng.choice((1, 1, 1, 2))))
            topics = ()
            to = {"users": list(users)}
        body = {
            "to": to,
            "event": "chaos",
            "ttl": 3600,
            "idempotency_key": key,
            "data": {
                "users": list(users),
                "topics": list(topics),
                "key": key,
                "caller": self.caller,
            },
        }
        turn = self.rng.randrange(len(self.nodes))
        first = time.monotonic()
        deadline = first + self.give_up
        attempt = 0
        while time.monotonic() < deadline:
            node = self.nodes[(turn + attempt) % len(self.nodes)]
            attempt += 1
            sent = time.monotonic()
            try:
                r = await h.post(node.api + "/v1/messages", json=body)
            except httpx.HTTPError as exc:
                self.statuses[type(exc).__name__] += 1
                self.answers.append((sent, time.monotonic(), type(exc).__name__))
                await asyncio.sleep(0.1)
                continue
            self.statuses[str(r.status_code)] += 1
            self.answers.append((sent, time.monotonic(), str(r.status_code)))
            if r.status_code == 202:
                msg_id = str(r.json()["id"])
                ids = self.ids_by_key.setdefault(key, set())
                if not ids:
                    self.accepted.append(
                        Sent(msg_id, self.caller, key, users, topics, time.time(), attempt)
                    )
                ids.add(msg_id)
                self.latencies.append(time.monotonic() - first)
                return
            if r.status_code not in RETRIED:
                if len(self.odd) < 5:
                    self.odd.append(f"{r.status_code} {r.text[:200]}")
                self.abandoned.append(key)  # a 4xx other than 409: the request itself is bad
                return
            await asyncio.sleep(0.1)
        self.abandoned.append(key)


async def mint(node: ChaosNode, user: str, topics: tuple[str, ...]) -> str:
    async with httpx.AsyncClient(timeout=10, headers={"Authorization": f"Bearer {KEY}"}) as h:
        body = {"user": user, "topics": list(topics), "ttl": TOKEN_TTL}
        r = await h.post(node.api + "/v1/tokens", json=body)
        r.raise_for_status()
        return str(r.json()["token"])


async def devices_for(nodes: list[ChaosNode], count: int, per_user: int) -> list[Device]:
    """``count`` devices, ``per_user`` per user, each user's devices on different nodes; every
    third user's tokens also read the topic."""
    out = []
    users = max(1, count // per_user)
    for u in range(users):
        user = f"p{u}"
        topics = (TOPIC,) if u % 3 == 0 else ()
        token = await mint(nodes[0], user, topics)
        for d in range(per_user):
            node = nodes[(u + d) % len(nodes)]
            out.append(Device(user, f"{user}-d{d}", node.node_id, node.ws, token, topics))
    return out
