"""Simulated patients' devices and a hospital publisher, for zero-loss tests across failures.

A :class:`Device` holds one WebSocket at a time to any node of a list, acks everything it gets,
and on any disconnect resumes on the next node with its last offsets. A :class:`Publisher`
publishes with idempotency keys through any node and retries elsewhere on failure. The proof of
zero loss compares what the API accepted with what each device received and with the trails.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
from dataclasses import dataclass, field
from typing import Any

import httpx
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from tests.support import API_KEY, UNIT, NodeHandle
from tests.wire import Wire


def _pos(offset: str) -> tuple[int, int]:
    ms, _, seq = offset.partition("-")
    return int(ms), int(seq)


@dataclass
class Device:
    user: str
    name: str
    token: str
    urls: list[str]
    received: dict[str, dict[str, Any]] = field(default_factory=dict)
    offsets: dict[str, str] = field(default_factory=dict)
    connections: int = 0
    close_codes: list[int] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)
    duplicates: int = 0
    errors: list[str] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None
    _stop: bool = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self._stop = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        for url in itertools.cycle(self.urls):
            if self._stop:
                return
            try:
                wire = await Wire.open(url, self.token, device=self.name, resume=dict(self.offsets))
            except (
                OSError,
                InvalidHandshake,
                InvalidStatus,
                ConnectionClosed,
                TimeoutError,
                AssertionError,
            ):
                await asyncio.sleep(0.05)
                continue
            self.connections += 1
            self.nodes.append(wire.welcome["node"])
            try:
                while True:
                    m = await wire.recv(timeout=3600)
                    if m["type"] == "ping":
                        await wire.send({"type": "pong"})
                        continue
                    if m["type"] == "error":
                        self.errors.append(m["code"])  # the close frame follows
                        continue
                    assert m["type"] == "msg", m
                    if m["id"] in self.received:
                        self.duplicates += 1
                    else:
                        self.received[m["id"]] = m
                    if m["ack"]:
                        await wire.ack(m["id"])
                    old = self.offsets.get(m["stream"])
                    if old is None or _pos(m["offset"]) > _pos(old):
                        self.offsets[m["stream"]] = m["offset"]
            except ConnectionClosed as exc:
                self.close_codes.append(exc.rcvd.code if exc.rcvd else 1006)
            except (OSError, TimeoutError):
                self.close_codes.append(1006)
            finally:
                with contextlib.suppress(Exception):
                    await wire.ws.close()
            await asyncio.sleep(0.02)


@dataclass
class Publisher:
    """Publishes through whichever node answers; a 503 or a dead node means: retry elsewhere."""

    nodes: list[NodeHandle]
    accepted: dict[str, str] = field(default_factory=dict)  # message id -> user
    refused: int = 0

    async def publish(self, user: str, seq: int, deadline: float = 30.0) -> str:
        key = f"k-{secrets.token_hex(8)}"
        body = {"to": {"users": [user]}, "event": "queue.position", "data": {"seq": seq},
                "idempotency_key": key}  # fmt: skip
        async with httpx.AsyncClient(timeout=2 * UNIT) as http, asyncio.timeout(deadline * UNIT):
            for node in itertools.cycle(self.nodes):
                try:
                    r = await http.post(node.internal_url + "/v1/messages", json=body,
                                        headers={"Authorization": f"Bearer {API_KEY}"})  # fmt: skip
                except httpx.HTTPError:
                    self.refused += 1
                    await asyncio.sleep(0.05)
                    continue
                if r.status_code == 202:
                    message_id = str(r.json()["id"])
                    self.accepted[message_id] = user
                    return message_id
                assert r.status_code == 503, r.text
                assert r.json()["error"]["code"] in ("broker_unavailable", "broker_error")
                self.refused += 1
                await asyncio.sleep(0.05)
        raise AssertionError("unreachable")


def missing(devices: list[Device], accepted: dict[str, str]) -> dict[str, list[str]]:
    """For each device, the accepted messages of its user it has not received."""
    out = {}
    for d in devices:
        lacking = [m for m, u in accepted.items() if u == d.user and m not in d.received]
        if lacking:
            out[d.name] = lacking
    return out
