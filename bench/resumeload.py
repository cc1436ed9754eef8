"""Load worker of clients that reconnect and resume, as a real app does when its node dies.

Started by ``bench.nodeloss`` as ``python -m bench.resumeload``; one JSON command per line on
stdin, one JSON reply per line on stdout (the structs of ``bench.resumewire``). Each client is
one user with one device. It connects to its home node's URL from the worker's ``source_ip``,
sends ``hello`` with its token, device and the last offset it saw on each stream (``resume``),
acks every message that asks for it (one ``ack`` frame per read), and answers pings. When its
connection ends (EOF, reset or a close frame) it waits a full-jitter backoff (uniform in 0 to
``backoff_base`` s, the bound doubling after each failed attempt, at most ``backoff_cap``) and
reconnects to another URL of the list, as a load balancer that stopped routing to a dead node
would send it.

What the app sees is deduplicated by offset: a message whose offset is not past the last one
seen on its stream is acked and dropped (a replay of an unacked message, or a redelivery).
Every message that gets past that is recorded with its arrival time (``time.time_ns()``); one
whose id was already recorded counts as a duplicate delivered to the app.

The process exits when stdin closes, after :class:`Collect`, or at its deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import os
import random
import resource
import socket
import sys
import time
from typing import Any, cast

import msgspec
import orjson

from bench import wsproto
from bench.common import Ready, mint_token, user_id
from bench.resumewire import (
    Collect,
    Command,
    Count,
    Counted,
    DeviceReport,
    Failed,
    Ramp,
    Ramped,
    Reply,
    Report,
    Setup,
)
from bench.sourceports import SourcePorts, connect_from
from bench.wsconn import WsClient

STOP_CODES = frozenset({4001, 4002, 4010})  # the protocol says: do not reconnect
PONG = orjson.dumps({"type": "pong"})


def offset_key(offset: str) -> tuple[int, int]:
    """An offset ``<ms>-<seq>`` as a pair of integers, the order within its stream."""
    ms, _, seq = offset.partition("-")
    return int(ms), int(seq)


class Device:
    """One client: its token, where it is, what its app got. :meth:`run` is its whole life."""

    def __init__(self, pool: Pool, index: int, home: int, token: str) -> None:
        self.pool = pool
        self.index = index
        self.url = home
        self.token = token
        self.device = f"dev{index}"
        self.offsets: dict[str, tuple[tuple[int, int], str]] = {}
        self.seen: set[str] = set()
        self.arrivals: list[tuple[str, int]] = []
        self.welcomes: list[tuple[int, str]] = []
        self.dials: list[int] = []
        self.losses: list[int] = []
        self.failed_attempts = 0
        self.duplicates = 0
        self.offset_dropped = 0
        self.dropped_unseen = 0
        self.stopped = ""
        self.conn: Conn | None = None
        self.welcomed = asyncio.Event()

    def hello(self) -> bytes:
        hello: dict[str, Any] = {"type": "hello", "token": self.token, "device": self.device}
        if self.offsets:
            hello["resume"] = {stream: text for stream, (_, text) in self.offsets.items()}
        return orjson.dumps(hello)

    def take(self, obj: dict[str, Any], t: int) -> None:
        """One ``msg`` frame, after its ack was queued: the offset check, then the app."""
        stream, offset, mid = obj.get("stream"), obj.get("offset"), obj.get("id")
        if not isinstance(stream, str) or not isinstance(offset, str) or not isinstance(mid, str):
            self.pool.count("malformed msg")
            return
        key = offset_key(offset)
        last = self.offsets.get(stream)
        if last is not None and key <= last[0]:
            self.offset_dropped += 1
            if mid not in self.seen:
                self.dropped_unseen += 1
            return
        self.offsets[stream] = (key, offset)
        data = obj.get("data")
        if not isinstance(data, dict) or data.get("run") != self.pool.setup.run:
            self.pool.count("foreign msg")
            return
        if mid in self.seen:
            self.duplicates += 1
            return
        self.seen.add(mid)
        self.arrivals.append((mid, t))
        self.pool.received += 1

    async def run(self, first: asyncio.Semaphore) -> None:
        """Connect (the first time within ``first``), and reconnect after every loss, until
        cancelled or told to stop by a close code."""
        s = self.pool.setup
        rng = self.pool.rng
        attempt = 0
        async with first:
            conn = await self._connect()
        while True:
            if conn is None:
                self.failed_attempts += 1
                attempt += 1
            else:
                self.conn = conn
                ended = await conn.ended
                self.conn = None
                if ended in STOP_CODES:
                    self.stopped = f"close {ended}"
                    return
                attempt = 0
            bound = min(s.backoff_cap, s.backoff_base * 2**attempt)
            await asyncio.sleep(rng.uniform(0, bound))
            others = [i for i in range(len(s.urls)) if i != self.url]
            if others:
                self.url = rng.choice(others)
            conn = await self._connect()

    async def _connect(self) -> Conn | None:
        """One connection to ``self.url``, open once it got ``welcome``; None if it did not.
        Its ``ended`` gives the close code (1006 for a drop without a close frame)."""
        pool = self.pool
        loop = asyncio.get_running_loop()
        conn = Conn(self, loop.create_future())
        self.dials.append(time.time_ns())
        sock: socket.socket | None = None
        try:
            async with asyncio.timeout(pool.setup.connect_timeout):
                sock = await connect_from(
                    loop, pool.setup.source_ip, pool.ports, pool.addresses[self.url]
                )
                await loop.create_connection(lambda: conn, sock=sock)
                sock = None  # the transport owns it now
                await conn.opened
        except TimeoutError:
            conn.abort()
            pool.count("timeout")
            return None
        except OSError as exc:
            pool.count("connect " + errno.errorcode.get(exc.errno or 0, type(exc).__name__))
            return None
        except HandshakeFailed as exc:
            pool.count(str(exc))
            return None
        finally:
            if sock is not None:
                sock.close()
        return conn


class HandshakeFailed(Exception):
    """A connection ended before ``welcome``; the message is the failure's category."""


class Conn(WsClient):
    """One WebSocket connection of a :class:`Device`: handshake, hello, frames."""

    def __init__(self, device: Device, opened: asyncio.Future[None]) -> None:
        super().__init__()
        self.device = device
        self.opened = opened
        self.ended: asyncio.Future[int] = opened.get_loop().create_future()
        self.upgraded = False
        self.open = False
        self.code = 1006

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        target = self.device.pool.targets[self.device.url]
        self.transport.write(wsproto.handshake_request(target, self.key))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.open:
            self.device.losses.append(time.time_ns())
            self.device.pool.open -= 1
            self.open = False
        self._fail("lost before welcome")
        if not self.ended.done():
            self.ended.set_result(self.code)

    def data_received(self, data: bytes) -> None:
        t = time.time_ns()
        if not self.upgraded:
            data = self._upgrade(data)
            if not data:
                return
        try:
            frames = self.codec.feed(data)
        except wsproto.WsProtocolError:
            self._fail("protocol error")
            self.abort()
            return
        acks: list[str] = []
        for opcode, payload in frames:
            if opcode == wsproto.OP_TEXT:
                self._text(payload, t, acks)
            elif opcode == wsproto.OP_PING:
                self._write(wsproto.encode_frame(wsproto.OP_PONG, payload))
            elif opcode == wsproto.OP_CLOSE:
                self.code = wsproto.close_payload(payload)
                self._fail(f"closed {self.code} before welcome")
                self.close(1000)
        for i in range(0, len(acks), 1000):
            self.send_text(orjson.dumps({"type": "ack", "ids": acks[i : i + 1000]}))

    def _refused(self, response: bytes, exc: wsproto.WsProtocolError) -> None:
        status = response[: response.find(b"\r\n")].decode(errors="replace")
        self._fail(f"handshake {status[9:12]}")

    def _upgraded(self) -> None:
        self.upgraded = True
        self.send_text(self.device.hello())

    def _text(self, payload: bytes, t: int, acks: list[str]) -> None:
        dev = self.device
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            dev.pool.count("bad json")
            return
        if not isinstance(obj, dict):
            return
        kind = obj.get("type")
        if kind == "msg":
            if obj.get("ack") and isinstance(obj.get("id"), str):
                acks.append(obj["id"])
            dev.take(obj, t)
        elif kind == "ping":
            self.send_text(PONG)
        elif kind == "welcome":
            self.open = True
            dev.pool.open += 1
            dev.welcomes.append((t, str(obj.get("node"))))
            dev.welcomed.set()
            if not self.opened.done():
                self.opened.set_result(None)
        elif kind == "error":
            self._fail(f"error {obj.get('code')}")

    def _fail(self, reason: str) -> None:
        if not self.opened.done():
            self.opened.set_exception(HandshakeFailed(reason))
            self.opened.exception()  # retrieved by Device._connect, or never awaited


class Pool:
    """Every client of this worker, and the counters they share."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self.rng = random.Random(setup.seed)
        self.ports = SourcePorts()
        self.targets = [wsproto.Target.parse(u) for u in setup.urls]
        self.addresses = [(t.host, t.port) for t in self.targets]
        self.errors: dict[str, int] = {}
        self.received = 0
        self.open = 0
        now = int(time.time())
        self.devices = [
            Device(
                self,
                setup.first + i,
                home,
                mint_token(
                    setup.token_secret,
                    user_id(setup.user_prefix, setup.first + i),
                    setup.token_ttl,
                    [],
                    now,
                ),
            )
            for i, home in enumerate(setup.homes)
        ]
        self.tasks: list[asyncio.Task[None]] = []

    def count(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1

    async def ramp(self, limit: float) -> Ramped:
        first = asyncio.Semaphore(self.setup.concurrency)
        start = time.monotonic()
        self.tasks = [asyncio.create_task(d.run(first)) for d in self.devices]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limit):
                for d in self.devices:
                    await d.welcomed.wait()
        ok = sum(1 for d in self.devices if d.welcomes)
        return Ramped(self.setup.worker, ok, time.monotonic() - start)

    async def collect(self) -> Report:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for d in self.devices:
            if d.conn is not None:
                d.conn.abort()
        devices = [
            DeviceReport(
                d.index,
                d.arrivals,
                d.welcomes,
                d.dials,
                d.losses,
                d.failed_attempts,
                d.duplicates,
                d.offset_dropped,
                d.dropped_unseen,
                d.stopped,
            )
            for d in self.devices
        ]
        return Report(self.setup.worker, devices, self.errors)


def _reply(reply: Reply) -> None:
    sys.stdout.buffer.write(msgspec.json.encode(reply) + b"\n")
    sys.stdout.buffer.flush()


def _deadline_passed(worker: int) -> None:
    print(f"resumeload[{worker}]: deadline passed, exiting", file=sys.stderr, flush=True)
    os._exit(3)


async def _serve(reader: asyncio.StreamReader) -> None:
    decoder = msgspec.json.Decoder(Command)
    first = await reader.readline()
    if not first:
        return
    setup = decoder.decode(first)
    if not isinstance(setup, Setup):
        raise TypeError("the first command must be Setup")
    asyncio.get_running_loop().call_later(setup.deadline, _deadline_passed, setup.worker)
    try:
        pool = Pool(setup)
    except Exception as exc:
        _reply(Failed(setup.worker, repr(exc)))
        return
    _reply(Ready(setup.worker, os.getpid()))
    while line := await reader.readline():
        match decoder.decode(line):
            case Ramp(limit=limit):
                _reply(await pool.ramp(limit))
            case Count():
                _reply(Counted(setup.worker, pool.received, pool.open))
            case Collect():
                _reply(await pool.collect())
                return
            case Setup():
                raise TypeError("Setup sent twice")
    await pool.collect()


async def _main() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    await _serve(reader)


def main() -> None:
    gc.disable()  # a client-side collection would show up as delivery latency
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop  # noqa: PLC0415 (optional speed-up)
    except ImportError:
        asyncio.run(_main())
    else:
        uvloop.run(_main())


if __name__ == "__main__":
    main()
