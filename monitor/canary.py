"""The canary: one probe client per node, a message through the API every few seconds, acked.

For each live node of the registry the monitor keeps a :class:`pushsvc.client.PushClient`
connected to that node's client address, as device ``canary`` of a user of its own
(:func:`canary_user`), and publishes an ``ack: true`` message to that user through the node's
internal API every ``canary_interval`` seconds. The message reaches the client only through the
node's bus subscription and fan-out, so a node whose subscription died while its heartbeat goes
on stops delivering canaries: :class:`CanaryTrack` notices (pure, ``now`` passed in).

Only live deliveries count: a canary replayed from the inbox after a reconnect proves nothing
about the fan-out. A node that is draining or restarting starts a fresh track. A new probe waits
for the node's internal API to answer (``GET /readyz``, any status) before its first publish: a
node registers before its API listens.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from pushsvc.broker.base import NodeInfo
from pushsvc.client import Message, PushClient

log = logging.getLogger(__name__)

EVENT = "pushsvc.canary"
TTL = 60  # seconds: a canary nobody received does not linger in an inbox
LISTEN_WAIT = 2.0  # seconds a tick waits at most for a new node's API to listen
LISTEN_POLL = 0.05
_UNSAFE = re.compile(r"[^A-Za-z0-9_.@+=-]")


def canary_user(node_id: str) -> str:
    """The canary's user for ``node_id`` (a valid user id, distinct per node)."""
    digest = hashlib.sha1(node_id.encode(), usedforsecurity=False).hexdigest()[:8]
    return f"pushsvc-canary.{_UNSAFE.sub('-', node_id)[:80]}.{digest}"


@dataclass(slots=True)
class CanaryTrack:
    """One node's canary record. ``since``: when this track started (a node's first sight or
    restart); ``stall``: seconds without a live arrival after which the node is stalled."""

    since: float
    stall: float
    published: dict[str, float] = field(default_factory=dict)  # id -> publish time
    last_arrival: float | None = None
    lost: int = 0
    _arrived: deque[str] = field(default_factory=lambda: deque(maxlen=256))

    def sent(self, message_id: str, at: float) -> None:
        """The API accepted canary ``message_id`` (it may have arrived already)."""
        if message_id not in self._arrived:
            self.published[message_id] = at

    def arrived(self, message_id: str, published_at: float, at: float) -> float:
        """A live canary arrived at ``at``: its latency from ``published_at``."""
        self._arrived.append(message_id)
        self.published.pop(message_id, None)
        self.last_arrival = at
        return max(0.0, at - published_at)

    def silent_for(self, now: float) -> float:
        return now - (self.last_arrival if self.last_arrival is not None else self.since)

    def up(self, now: float) -> bool:
        return self.silent_for(now) < self.stall

    def overdue(self, now: float) -> int:
        """Forget canaries older than ``stall`` that never arrived; how many there were."""
        late = [m for m, at in self.published.items() if now - at >= self.stall]
        for m in late:
            del self.published[m]
        self.lost += len(late)
        return len(late)


@dataclass(slots=True)
class _Probe:
    node: NodeInfo
    track: CanaryTrack
    client: PushClient
    reader: asyncio.Task[None]
    sequence: int = 0
    listening: bool = False  # the node's API has answered once


class Canary:
    """Probe clients for every live node. Call :meth:`tick` every ``interval``; ``close()``.

    ``api_key`` needs the ``publish`` and ``tokens`` scopes. ``scheme`` ``https`` reaches the
    nodes' internal APIs over TLS with ``tls`` (else the system's CAs).

    ``on_latency(node, seconds)`` is called for each live canary that arrives."""

    def __init__(
        self,
        api_key: str,
        stall: float,
        interval: float,
        on_latency: Callable[[str, float], None] | None = None,
        *,
        scheme: str = "http",
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._api_key = api_key
        self._stall = stall
        self._interval = interval
        self._on_latency = on_latency
        self._scheme = scheme
        self._probes: dict[str, _Probe] = {}
        self._http = httpx.AsyncClient(
            timeout=max(0.5, min(5.0, interval)),
            headers={"Authorization": f"Bearer {api_key}"},
            verify=tls if tls is not None else True,
        )

    @property
    def tracks(self) -> dict[str, CanaryTrack]:
        return {node: p.track for node, p in self._probes.items()}

    async def tick(self, nodes: list[NodeInfo], now: float) -> None:
        """Follow the registry (start, restart or stop probes), then publish one canary per node."""
        live = {n.id: n for n in nodes if n.state == "up"}
        for node_id in [n for n in self._probes if n not in live]:
            await self._stop(node_id)
        for node_id, info in live.items():
            probe = self._probes.get(node_id)
            if probe is not None and (
                probe.node.started != info.started or probe.node.client_addr != info.client_addr
            ):
                await self._stop(node_id)
                probe = None
            if probe is None:
                probe = self._start(info, now)
            probe.node = info
            probe.track.overdue(now)
            await self._publish(probe, now)

    def _start(self, node: NodeInfo, now: float) -> _Probe:
        user = canary_user(node.id)
        api = f"{self._scheme}://{node.internal_addr}"

        async def token() -> str:
            response = await self._http.post(api + "/v1/tokens", json={"user": user, "ttl": 3600})
            response.raise_for_status()
            return str(response.json()["token"])

        client = PushClient(
            f"ws://{node.client_addr}/ws", token, device="canary",
            backoff_base=0.1, backoff_cap=max(0.2, self._interval), open_timeout=5.0,
        )  # fmt: skip
        track = CanaryTrack(since=now, stall=self._stall)
        reader = asyncio.get_running_loop().create_task(
            self._read(node.id, client, track), name=f"canary-{node.id}"
        )
        probe = _Probe(node, track, client, reader)
        self._probes[node.id] = probe
        log.info("canary started", extra={"node": node.id, "client": node.client_addr})
        return probe

    async def _read(self, node_id: str, client: PushClient, track: CanaryTrack) -> None:
        await client.start()
        async for message in client:
            self._arrived(node_id, message, track)

    def _arrived(self, node_id: str, message: Message, track: CanaryTrack) -> None:
        if message.event != EVENT or message.replay:
            return
        latency = track.arrived(message.id, message.ts / 1000, time.time())
        if self._on_latency is not None:
            self._on_latency(node_id, latency)

    async def _listening(self, node: NodeInfo) -> bool:
        """Whether ``node``'s internal API answers, waiting up to LISTEN_WAIT (or the interval)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(LISTEN_WAIT, self._interval)
        while True:
            try:
                await self._http.get(f"http://{node.internal_addr}/readyz")
            except httpx.TransportError:
                if loop.time() + LISTEN_POLL >= deadline:
                    log.info("canary waits for the node's API", extra={"node": node.id})
                    return False
                await asyncio.sleep(LISTEN_POLL)
            else:
                return True

    async def _publish(self, probe: _Probe, now: float) -> None:
        if not probe.listening:
            probe.listening = await self._listening(probe.node)
            if not probe.listening:
                return
        probe.sequence += 1
        body = {
            "to": {"users": [canary_user(probe.node.id)]}, "event": EVENT, "ack": True,
            "ttl": TTL, "data": {"node": probe.node.id, "n": probe.sequence},
        }  # fmt: skip
        try:
            response = await self._http.post(
                f"{self._scheme}://{probe.node.internal_addr}/v1/messages", json=body
            )
        except httpx.HTTPError as exc:
            log.warning("canary publish failed", extra={"node": probe.node.id, "error": str(exc)})
            return
        if response.status_code != 202:
            log.warning(
                "canary publish refused",
                extra={"node": probe.node.id, "status": response.status_code},
            )
            return
        probe.track.sent(str(response.json()["id"]), now)

    async def _stop(self, node_id: str) -> None:
        probe = self._probes.pop(node_id, None)
        if probe is None:
            return
        probe.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await probe.reader
        await probe.client.close()
        log.info("canary stopped", extra={"node": node_id})

    async def close(self) -> None:
        """Stop every probe and close the HTTP client (idempotent)."""
        for node_id in list(self._probes):
            await self._stop(node_id)
        await self._http.aclose()
