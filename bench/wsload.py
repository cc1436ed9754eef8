"""Load worker: thousands of light WebSocket client connections in one process.

Started by ``bench.fanout`` as ``python -m bench.wsload``; speaks the line protocol of
``bench.common`` on stdin/stdout. Every connection binds to the worker's ``source_ip`` (one
address of 127.0.0.0/8 per worker) and a port chosen by ``bench.sourceports``, sends ``hello``
with its own token, and counts as open once ``welcome`` arrives (``bench.wsconn``). Open
connections answer
``{"type":"ping"}`` and WebSocket pings, ack every message that asks for it, and record the arrival
time (``time.time_ns()``, taken when the bytes are handed over by the event loop) of the benchmark's
broadcast and user-targeted messages.

With ``Setup.protocol = "socketio"`` the connections speak Socket.IO 4 instead
(``bench.sioconn``): the same processes, timing and commands drive a Socket.IO peer.

The process exits when stdin closes, after ``Close``, or at its deadline. Its garbage collector is
off so that a client-side collection cannot show up as delivery latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import os
import resource
import socket
import sys
import time
from collections import Counter
from typing import Any

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
    PrivateKey,
    Ramp,
    Ramped,
    Ready,
    Reply,
    Setup,
    Status,
    UserArrivals,
    WorkerFailed,
    mint_token,
    private_key,
    user_id,
)
from bench.sioconn import SioConn
from bench.sourceports import SourcePorts, connect_from
from bench.wsconn import OPEN, Conn, HandshakeFailed

STDIN_LIMIT = 64 * 1024 * 1024


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
        self.foreign_messages = 0
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
        key: str | PrivateKey | None = setup.token_secret
        algorithm = "HS256"
        if setup.token_private_key is not None:
            key, algorithm = private_key(setup.token_private_key), setup.token_algorithm
        if setup.protocol not in ("pushsvc", "socketio"):
            raise ValueError(f"unknown protocol {setup.protocol!r}")
        self.conn_type: type[Conn] = Conn
        if setup.protocol == "socketio":
            self.conn_type = SioConn
            self.tokens = []
        elif key is not None:
            ttl, topics = setup.token_ttl, setup.topics
            self.tokens = [
                mint_token(key, user_id(setup.user_prefix, i), ttl, topics, now, algorithm)
                for i in range(setup.first, setup.first + setup.count)
            ]
        else:
            self.tokens = setup.tokens
        if setup.protocol == "pushsvc" and len(self.tokens) != setup.count:
            raise ValueError(f"{len(self.tokens)} tokens for {setup.count} connections")

    # -- called by connections ---------------------------------------------------------------

    def on_msg(self, conn: Conn, obj: dict[str, Any], t: int) -> None:
        if obj.get("ack") and "id" in obj:
            conn.send_text(orjson.dumps({"type": "ack", "ids": [obj["id"]]}))
            self.acks_sent += 1
        data = obj.get("data")
        if not isinstance(data, dict) or data.get("run") != self.setup.run:
            self.foreign_messages += 1
            return
        seq = data.get("seq")
        if not isinstance(seq, int):
            self.foreign_messages += 1
            return
        event = obj.get("event")
        if event == BROADCAST_EVENT:
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
                self.user_arrivals.append((seq, t))
        else:
            self.foreign_messages += 1

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
        conn = self.conn_type(self, slot, welcomed)
        sock: socket.socket | None = None
        try:
            async with asyncio.timeout(s.connect_timeout):
                sock = await connect_from(loop, s.source_ip, self._ports, self.address)
                await loop.create_connection(lambda: conn, sock=sock)
                sock = None  # the transport owns it now
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
            foreign_messages=self.foreign_messages,
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
