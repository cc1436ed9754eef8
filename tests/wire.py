"""A thin WebSocket test client that speaks the wire protocol by hand (docs/protocol.md)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.support import UNIT


class Wire:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.welcome: dict[str, Any] = {}

    @classmethod
    async def open(
        cls,
        url: str,
        token: str | None,
        device: str = "d1",
        resume: dict[str, str] | None = None,
        **connect_kwargs: Any,
    ) -> Wire:
        """Connect; with a token, say hello and read the welcome."""
        ws = await connect(url, compression=None, open_timeout=5 * UNIT, **connect_kwargs)
        wire = cls(ws)
        if token is not None:
            hello: dict[str, Any] = {"type": "hello", "token": token, "device": device}
            if resume:
                hello["resume"] = resume
            await wire.send(hello)
            wire.welcome = await wire.recv()
            assert wire.welcome["type"] == "welcome", wire.welcome
        return wire

    async def send(self, frame: dict[str, Any] | str | bytes) -> None:
        await self.ws.send(json.dumps(frame) if isinstance(frame, dict) else frame)

    async def recv(self, timeout: float = 3 * UNIT) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        frame: dict[str, Any] = json.loads(raw)
        return frame

    async def recv_msg(self, timeout: float = 3 * UNIT) -> dict[str, Any]:
        """The next ``msg`` frame, answering pings on the way."""
        while True:
            frame = await self.recv(timeout)
            if frame["type"] == "ping":
                await self.send({"type": "pong"})
                continue
            assert frame["type"] == "msg", frame
            return frame

    async def messages(self, n: int, timeout: float = 3 * UNIT) -> list[dict[str, Any]]:
        return [await self.recv_msg(timeout) for _ in range(n)]

    async def silent(self, seconds: float = 0.3 * UNIT) -> None:
        """Assert that no message arrives for ``seconds``."""
        try:
            frame = await asyncio.wait_for(self.ws.recv(), seconds)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected frame {frame!r}")

    async def ack(self, *ids: str) -> None:
        await self.send({"type": "ack", "ids": list(ids)})

    async def closed(self, timeout: float = 5 * UNIT) -> tuple[int, str, list[dict[str, Any]]]:
        """Read until the server closes; return (code, reason, frames read on the way)."""
        seen: list[dict[str, Any]] = []
        try:
            async with asyncio.timeout(timeout):
                while True:
                    seen.append(json.loads(await self.ws.recv()))
        except ConnectionClosed as exc:
            assert exc.rcvd is not None, "connection dropped without a close frame"
            return exc.rcvd.code, exc.rcvd.reason, seen
        raise AssertionError("unreachable")

    async def close(self) -> None:
        await self.ws.close()
