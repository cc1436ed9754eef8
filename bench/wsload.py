"""Load worker: thousands of light WebSocket client connections in one process.

Started by ``bench.fanout`` as ``python -m bench.wsload``; speaks the line protocol of
``bench.common`` on stdin/stdout. Every connection binds its source address to the worker's
``source_ip`` (one address of 127.0.0.0/8 per worker spreads the ephemeral ports), sends ``hello``
with its own token, and counts as open once ``welcome`` arrives. Open connections answer
``{"type":"ping"}`` and WebSocket pings, ack every message that asks for it, and record the arrival
time (``time.time_ns()``, taken when the bytes are handed over by the event loop) of the benchmark's
broadcast and user-targeted messages.

The process exits when stdin closes, after ``Close``, or at its deadline. Its garbage collector is
off so that a client-side collection cannot show up as delivery latency.
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
from collections import Counter
from typing import Any, cast

import msgspec
import orjson

from bench import wsproto
from bench.common import (
    BROADCAST_EVENT,
    USER_EVENT,
    BroadcastArrivals,
    Close,
    CollectBroadcast,
    CollectUser,
    Command,
    GetStatus,
    Ramp,
    Ramped,
    Ready,
    Reply,
    Setup,
    Status,
    UserArrivals,
    WorkerFailed,
    mint_token,
    user_id,
)

PONG = orjson.dumps({"type": "pong"})
STDIN_LIMIT = 64 * 1024 * 1024

HANDSHAKE, HELLO, OPEN, CLOSED = range(4)

_now_ns = time.time_ns

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # Linux >= 4.2
PORT_TRIES = 20


class HandshakeFailed(Exception):
    """A connection did not reach ``welcome``; the message is the failure's category."""


class Worker:
    """All connections of one process and what they recorded."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self.target = wsproto.Target.parse(setup.url)
        self.conns: dict[int, Conn] = {}
        self.closed: Counter[str] = Counter()
        self.protocol_errors = 0
        self.pings_answered = 0
        self.unexpected_frames = 0
        self.acks_sent = 0
        self.transports = 0
        self.address = (self.target.host, self.target.port)
        self._ports = SourcePorts()
        self.all_lost = asyncio.Event()
        # The last data chunk that was exactly one ``msg`` frame, and that message: a broadcast
        # reaches every connection as the same bytes, so it is parsed once per process.
        self.last_frame = b""
        self.last_msg: dict[str, Any] = {}
        self.bcast: dict[int, list[int]] = {}
        self.bcast_dups: Counter[int] = Counter()
        self.bcast_count: Counter[int] = Counter()
        self.user_arrivals: list[tuple[int, int]] = []
        self.user_seen: set[str] = set()
        self.user_dups = 0
        now = int(time.time())
        if setup.token_secret is not None:
            secret, ttl, topics = setup.token_secret, setup.token_ttl, setup.topics
            self.tokens = [
                mint_token(secret, user_id(setup.user_prefix, i), ttl, topics, now)
                for i in range(setup.first, setup.first + setup.count)
            ]
        else:
            self.tokens = setup.tokens
        if len(self.tokens) != setup.count:
            raise ValueError(f"{len(self.tokens)} tokens for {setup.count} connections")

    # -- called by connections ---------------------------------------------------------------

    def on_msg(self, conn: Conn, obj: dict[str, Any], t: int) -> None:
        event = obj.get("event")
        if event == BROADCAST_EVENT:
            seq = obj["data"]["seq"]
            arr = self.bcast.get(seq)
            if arr is None:
                arr = self.bcast[seq] = [0] * self.setup.count
            if arr[conn.slot]:
                self.bcast_dups[seq] += 1
            else:
                arr[conn.slot] = t
                self.bcast_count[seq] += 1
        elif event == USER_EVENT:
            mid = obj.get("id", "")
            if mid in self.user_seen:
                self.user_dups += 1
            else:
                self.user_seen.add(mid)
                self.user_arrivals.append((obj["data"]["seq"], t))
        if obj.get("ack"):
            conn.send_text(orjson.dumps({"type": "ack", "ids": [obj["id"]]}))
            self.acks_sent += 1

    # -- commands ------------------------------------------------------------------------------

    async def ramp(self) -> Ramped:
        s = self.setup
        loop = asyncio.get_running_loop()
        pending = iter(range(s.count))
        errors: Counter[str] = Counter()
        times: list[int] = []

        async def lane() -> None:
            for slot in pending:
                t0 = time.perf_counter_ns()
                try:
                    await self._open(loop, slot)
                except HandshakeFailed as exc:
                    errors[str(exc)] += 1
                else:
                    times.append(time.perf_counter_ns() - t0)

        infos = await loop.getaddrinfo(
            self.target.host, self.target.port, family=socket.AF_INET, type=socket.SOCK_STREAM
        )
        host, port = infos[0][4][:2]
        self.address = (str(host), int(port))
        start = time.perf_counter()
        async with asyncio.TaskGroup() as tg:
            for _ in range(min(s.concurrency, s.count)):
                tg.create_task(lane())
        seconds = time.perf_counter() - start
        connected = sorted(s.first + slot for slot, c in self.conns.items() if c.state == OPEN)
        return Ramped(
            worker=s.worker,
            ok=len(times),
            failed=s.count - len(times),
            errors=dict(errors),
            seconds=seconds,
            handshake_ns=times,
            connected=connected,
        )

    async def _open(self, loop: asyncio.AbstractEventLoop, slot: int) -> None:
        s = self.setup
        welcomed: asyncio.Future[None] = loop.create_future()
        conn = Conn(self, slot, welcomed)
        sock: socket.socket | None = None
        try:
            async with asyncio.timeout(s.connect_timeout):
                sock = await self._connect(loop)
                await loop.create_connection(lambda: conn, sock=sock)
                await welcomed
        except TimeoutError:
            conn.abort()
            if sock is not None:
                sock.close()
            raise HandshakeFailed("timeout") from None
        except OSError as exc:
            if sock is not None:
                sock.close()
            name = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
            raise HandshakeFailed(f"connect {name}") from None
        self.conns[slot] = conn

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> socket.socket:
        """A socket connected to the target from ``source_ip`` and a port of our choosing.

        Choosing source ports ourselves (sequentially from a random start) keeps connect() O(1):
        left to the kernel, each connect from one address to one destination scans past the
        ports already taken, which makes a ramp of many thousands quadratic.
        """
        for _ in range(PORT_TRIES):
            try:
                sock = _client_socket(self.setup.source_ip, self._ports.take())
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    continue  # a listener on 0.0.0.0 or a socket still in TIME_WAIT
                raise
            try:
                await loop.sock_connect(sock, self.address)
            except OSError as exc:
                sock.close()
                if exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
                    continue  # the same 4-tuple is still in TIME_WAIT
                raise
            except BaseException:
                sock.close()
                raise
            return sock
        sock = _client_socket(self.setup.source_ip, 0)
        try:
            await loop.sock_connect(sock, self.address)
        except BaseException:
            sock.close()
            raise
        return sock

    async def collect_broadcast(self, cmd: CollectBroadcast) -> BroadcastArrivals:
        deadline = time.monotonic() + cmd.timeout
        while time.monotonic() < deadline:
            open_slots = sum(1 for c in self.conns.values() if c.state == OPEN)
            if self.bcast_count[cmd.seq] >= open_slots:
                break
            await asyncio.sleep(0.02)
        arr = self.bcast.pop(cmd.seq, [])
        arrivals = [t for t in arr if t]
        return BroadcastArrivals(
            worker=self.setup.worker,
            seq=cmd.seq,
            arrivals=arrivals,
            missing=len(self.conns) - len(arrivals),
            duplicates=self.bcast_dups[cmd.seq],
        )

    def collect_user(self) -> UserArrivals:
        out = UserArrivals(
            worker=self.setup.worker,
            arrivals=self.user_arrivals,
            duplicates=self.user_dups,
            acks_sent=self.acks_sent,
        )
        self.user_arrivals = []
        return out

    def status(self) -> Status:
        return Status(
            worker=self.setup.worker,
            open=sum(1 for c in self.conns.values() if c.state == OPEN),
            closed=dict(self.closed),
            protocol_errors=self.protocol_errors,
            pings_answered=self.pings_answered,
            unexpected_frames=self.unexpected_frames,
        )

    async def close(self, grace: float) -> Status:
        """Close every connection with 1000; abort those still there after ``grace`` seconds."""
        for conn in self.conns.values():
            conn.close(1000)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                while self.transports:
                    self.all_lost.clear()
                    await self.all_lost.wait()
        for conn in self.conns.values():
            conn.abort()
        return self.status()


class Conn(asyncio.Protocol):
    """One client connection: handshake, hello, then frames."""

    __slots__ = ("codec", "head", "key", "slot", "state", "transport", "welcomed", "worker")

    def __init__(self, worker: Worker, slot: int, welcomed: asyncio.Future[None]) -> None:
        self.worker = worker
        self.slot = slot
        self.welcomed = welcomed
        self.state = HANDSHAKE
        self.transport: asyncio.Transport | None = None
        self.key = wsproto.new_key()
        self.head = b""
        self.codec = wsproto.ClientCodec()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.worker.transports += 1
        self.transport.write(wsproto.handshake_request(self.worker.target, self.key))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state != CLOSED:
            if self.state == OPEN:
                self.worker.closed["lost"] += 1
            self.state = CLOSED
        self.transport = None
        self.worker.transports -= 1
        if not self.worker.transports:
            self.worker.all_lost.set()
        self._fail("lost before welcome")

    def data_received(self, data: bytes) -> None:
        t = _now_ns()
        w = self.worker
        whole = self.codec.idle
        if whole and data == w.last_frame and self.state == OPEN:
            w.on_msg(self, w.last_msg, t)
            return
        if self.state == HANDSHAKE:
            data = self._handshake(data)
            if not data:
                return
        try:
            frames = self.codec.feed(data)
        except wsproto.WsProtocolError:
            w.protocol_errors += 1
            self._fail("protocol error")
            self.abort()
            return
        whole = whole and len(frames) == 1 and self.codec.idle
        for opcode, payload in frames:
            if opcode == wsproto.OP_TEXT:
                msg = self._text(payload, t)
                if whole and msg is not None:
                    w.last_frame = data
                    w.last_msg = msg
            elif opcode == wsproto.OP_PING:
                self._write(wsproto.encode_frame(wsproto.OP_PONG, payload))
                self.worker.pings_answered += 1
            elif opcode == wsproto.OP_CLOSE:
                code = wsproto.close_payload(payload)
                self._fail(f"closed {code} before welcome")
                if self.state == OPEN:
                    self.worker.closed[str(code)] += 1
                self.close(1000)
            elif opcode != wsproto.OP_PONG:
                self.worker.unexpected_frames += 1

    def _handshake(self, data: bytes) -> bytes:
        buf = self.head + data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            self.head = buf
            return b""
        self.head = b""
        try:
            wsproto.parse_handshake_response(buf[:end], self.key)
        except wsproto.WsProtocolError as exc:
            self._fail(f"handshake: {exc}")
            self.abort()
            return b""
        self.state = HELLO
        s = self.worker.setup
        index = s.first + self.slot
        hello = {
            "type": "hello",
            "token": self.worker.tokens[self.slot],
            "device": f"{s.device_prefix}{index}",
        }
        self.send_text(orjson.dumps(hello))
        return buf[end + 4 :]

    def _text(self, payload: bytes, t: int) -> dict[str, Any] | None:
        """Handle one text message; return it if it is a ``msg``."""
        w = self.worker
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            w.protocol_errors += 1
            return None
        if not isinstance(obj, dict):
            w.unexpected_frames += 1
            return None
        kind = obj.get("type")
        if kind == "msg":
            w.on_msg(self, obj, t)
            return obj
        if kind == "ping":
            self.send_text(PONG)
            w.pings_answered += 1
        elif kind == "welcome":
            self.state = OPEN
            if not self.welcomed.done():
                self.welcomed.set_result(None)
        elif kind == "error":
            self._fail(f"error {obj.get('code')}")
        elif kind != "pong":
            w.unexpected_frames += 1
        return None

    def _fail(self, reason: str) -> None:
        if not self.welcomed.done():
            self.welcomed.set_exception(HandshakeFailed(reason))
            # Retrieved by the ramp; mark it so a late failure is not logged as unretrieved.
            self.welcomed.exception()

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def send_text(self, payload: bytes) -> None:
        self._write(wsproto.encode_frame(wsproto.OP_TEXT, payload))

    def close(self, code: int) -> None:
        """Send a close frame and close the transport after it is written."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(wsproto.encode_frame(wsproto.OP_CLOSE, code.to_bytes(2, "big")))
            self.transport.close()
        if self.state == OPEN:
            self.state = CLOSED

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class SourcePorts:
    """Source ports handed out in sequence from a random start, wrapping within [low, high)."""

    def __init__(self, low: int = 1024, high: int = 65536) -> None:
        self.low = low
        self.high = high
        self.next = random.randrange(low, high)

    def take(self) -> int:
        port = self.next
        self.next = port + 1 if port + 1 < self.high else self.low
        return port


def _client_socket(source_ip: str, port: int) -> socket.socket:
    """A non-blocking TCP socket bound to ``(source_ip, port)``.

    With ``port`` 0 the kernel picks the port at connect time (``IP_BIND_ADDRESS_NO_PORT``), by
    the whole 4-tuple rather than among ports free for every destination.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if port == 0:
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((source_ip, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _raise_fd_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _reply(reply: Reply) -> None:
    sys.stdout.buffer.write(msgspec.json.encode(reply) + b"\n")
    sys.stdout.buffer.flush()


async def _serve(reader: asyncio.StreamReader) -> None:
    decoder = msgspec.json.Decoder(Command)
    first = await reader.readline()
    if not first:
        return
    setup = decoder.decode(first)
    if not isinstance(setup, Setup):
        raise TypeError("the first command must be Setup")
    if setup.cpus:
        os.sched_setaffinity(0, setup.cpus)
    loop = asyncio.get_running_loop()
    loop.call_later(setup.deadline, _deadline_passed, setup.worker)
    try:
        worker = Worker(setup)
    except Exception as exc:
        _reply(WorkerFailed(worker=setup.worker, error=repr(exc)))
        return
    _reply(Ready(worker=setup.worker, pid=os.getpid()))
    while line := await reader.readline():
        cmd = decoder.decode(line)
        match cmd:
            case Ramp():
                _reply(await worker.ramp())
            case CollectBroadcast():
                _reply(await worker.collect_broadcast(cmd))
            case CollectUser():
                _reply(worker.collect_user())
            case GetStatus():
                _reply(worker.status())
            case Close():
                _reply(await worker.close(cmd.timeout))
                return
            case Setup():
                raise TypeError("Setup sent twice")
    await worker.close(1.0)


def _deadline_passed(worker: int) -> None:
    print(f"wsload[{worker}]: deadline passed, exiting", file=sys.stderr, flush=True)
    os._exit(3)


async def _main() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=STDIN_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    await _serve(reader)


def main() -> None:
    gc.disable()
    _raise_fd_limit()
    try:
        import uvloop  # noqa: PLC0415 (optional speed-up, absent on some platforms)
    except ImportError:
        asyncio.run(_main())
    else:
        uvloop.run(_main())
    with contextlib.suppress(OSError):
        sys.stdout.flush()


if __name__ == "__main__":
    main()
