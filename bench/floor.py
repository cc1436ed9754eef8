"""The floor of the fan-out benchmarks: raw uvloop writing one pre-encoded frame to every socket.

Run from the repository root, as the server a benchmark starts::

    python -m bench.fanout --start-server -n 19000 --user-duration 0 \\
        --server-cmd "{python} -m bench.floor {port} {internal_port}"
    python -m bench.cluster -n 100000 --workers 6 --client-procs 6 \\
        --server-cmd "{python} -m bench.floor {port} {internal_port}"

or by hand: ``python -m bench.floor PORT INTERNAL_PORT [--workers K] [--redis-url URL]``.

It is the cheapest server that speaks enough of pushsvc's client protocol for ``bench.wsload``, so
that the same harness times pushsvc and the floor side by side, in one run, on one machine. The
upgrade is answered by hand (``Sec-WebSocket-Accept``); the client's ``hello`` is decoded by
pushsvc's own frame decoder and answered with a ``welcome`` of pushsvc's shape; pings (WebSocket
and ``{"type":"ping"}``) are answered, a close is echoed, anything else is ignored. Connections are
plain asyncio protocols on uvloop, kept in one dict once welcomed.

The internal port answers ``POST /v1/messages`` with ``"to": {"all": true}``: the ``msg`` frame
(id, stream ``all``, an offset, event, data, ``ts`` = publish time in ms) is encoded and framed
once, and the same bytes are written to every connection with ``transport.write`` in one plain
loop: no task per client, no gather, no per-client work, no yield to the event loop. The answer
is 202 with the message's ``id`` and ``streams``, as pushsvc's. ``GET /readyz`` and ``/healthz``
say it is up, ``GET /metrics`` is an exposition without series, ``POST /v1/tokens`` hands out a
placeholder token.

Deliberately not done: no authentication (the token is not even decoded, ``welcome`` names no
user), no users or topics (any other target is refused with 422), no history, replay or resume,
no acks or redelivery, no heartbeats, no outbox or backpressure, no metrics, no drain.

``--workers K`` runs a supervisor and K worker processes sharing the client port
(``SO_REUSEPORT``), worker ``i`` on internal port ``INTERNAL_PORT + i``, as ``pushsvc serve
--workers`` does. With ``--redis-url`` a worker does not deliver a publish itself: it PUBLISHes
the framed bytes on one channel, and every worker (the publisher included) writes them to its
connections as they arrive on its SUBSCRIBE connection (raw RESP, parsed by hiredis). Without it a
publish reaches the connections of the worker that took it.

SIGTERM or SIGINT: stop listening, close every connection with 1001, exit; the supervisor forwards
them to its workers, and a worker gets SIGTERM if the supervisor dies. RLIMIT_NOFILE's soft limit
is raised to the hard one at start.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from types import FrameType
from typing import Final, cast
from urllib.parse import urlsplit

import hiredis
import httptools
import msgspec
import orjson
import uvloop

from bench import procstat, wsproto
from pushsvc.core import frames, offsets
from pushsvc.core.streams import ALL
from pushsvc.errors import FrameError

CHANNEL: Final = b"bench.floor:broadcast"
MAX_FRAME: Final = 64 * 1024
MAX_HEAD: Final = 8 * 1024
BACKLOG: Final = 4096
HEARTBEAT_S: Final = 0.0  # said in welcome: the floor sends no heartbeats
STOP_GRACE_S: Final = 10.0
SUBSCRIBE_TIMEOUT_S: Final = 10.0
JSON: Final = b"application/json"
TEXT: Final = b"text/plain; version=0.0.4"
PONG_FRAME: Final = frames.ws_text_frame(frames.PONG)


def say(message: str) -> None:
    print(f"[floor {datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


# -- WebSocket, no I/O -------------------------------------------------------------------------


def upgrade_response(head: bytes) -> bytes:
    """The 101 answer to an upgrade request ``head`` (without its blank line).

    Raises :class:`FrameError` (close code 1002) when it has no ``Sec-WebSocket-Key``."""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"sec-websocket-key":
            return (
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
                + wsproto.accept_for(value.strip())
                + b"\r\n\r\n"
            )
    raise FrameError("no Sec-WebSocket-Key", code=1002)


def read_frames(buf: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """Split ``buf`` into the complete client frames it holds, ``(opcode, unmasked payload)``, and
    the bytes of the incomplete one after them.

    Raises :class:`FrameError` carrying the close code for a frame the floor does not take: not
    masked, fragmented (the load clients never fragment), reserved bits, over :data:`MAX_FRAME`."""
    out: list[tuple[int, bytes]] = []
    pos, end = 0, len(buf)
    while end - pos >= 2:
        b0, b1 = buf[pos], buf[pos + 1]
        if not b1 & 0x80:
            raise FrameError("client frame not masked", code=1002)
        if b0 & 0x70 or not b0 & 0x80:
            raise FrameError("fragmented frame or reserved bits", code=1002)
        n = b1 & 0x7F
        start = pos + 2
        if n == 126:
            if end - start < 2:
                break
            n = int.from_bytes(buf[start : start + 2], "big")
            start += 2
        elif n == 127:
            if end - start < 8:
                break
            n = int.from_bytes(buf[start : start + 8], "big")
            start += 8
        if n > MAX_FRAME:
            raise FrameError(f"frame of {n} bytes", code=1009)
        if end - start < 4 + n:
            break
        payload = buf[start + 4 : start + 4 + n]
        out.append((b0 & 0x0F, wsproto.mask_payload(payload, buf[start : start + 4])))
        pos = start + 4 + n
    return out, buf[pos:]


def control_frame(opcode: int, payload: bytes) -> bytes:
    """An unmasked control frame (a payload longer than 125 bytes is cut)."""
    payload = payload[:125]
    return bytes((0x80 | opcode, len(payload))) + payload


# -- one worker ----------------------------------------------------------------------------------


class Floor:
    """One worker's state: its welcomed connections, and the one write loop of a broadcast."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.conns: dict[Client, asyncio.Transport] = {}
        self.sessions = 0
        self.last = offsets.ZERO

    def encode(self, event: str, data: msgspec.Raw, now_ms: int) -> tuple[str, str, bytes]:
        """A new message's id, offset and framed ``msg``: the bytes every connection gets."""
        self.last = offsets.next_position(self.last, now_ms)
        offset = offsets.format_position(self.last)
        mid = f"{now_ms:012x}{random.getrandbits(80):020x}"
        msg = frames.encode_msg(mid, ALL, offset, event, data, now_ms, False, False)
        return mid, offset, frames.ws_text_frame(msg)

    def deliver(self, frame: bytes) -> None:
        """Write ``frame`` to every welcomed connection. (A connection the peer reset is still
        here until its ``connection_lost``; uvloop drops writes to it without raising.)"""
        for transport in self.conns.values():
            transport.write(frame)


class Client(asyncio.Protocol):
    """One client connection: upgrade, ``hello`` → ``welcome``, then pings and close only."""

    __slots__ = ("buf", "floor", "head", "transport", "welcomed")

    def __init__(self, floor: Floor) -> None:
        self.floor = floor
        self.transport: asyncio.Transport | None = None
        self.head: bytes | None = b""  # the upgrade request so far; None once answered
        self.buf = b""
        self.welcomed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.floor.conns.pop(self, None)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        try:
            if self.head is not None:
                data = self._upgrade(data)
            got, self.buf = read_frames(self.buf + data if self.buf else data)
        except FrameError as exc:
            self.close(exc.code)
            return
        for opcode, payload in got:
            if opcode == wsproto.OP_TEXT:
                self._text(payload)
            elif opcode == wsproto.OP_PING:
                self._write(control_frame(wsproto.OP_PONG, payload))
            elif opcode == wsproto.OP_CLOSE:
                self.close(wsproto.close_payload(payload))
                return

    def _upgrade(self, data: bytes) -> bytes:
        buf = (self.head or b"") + data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEAD:
                raise FrameError("upgrade request too long", code=1002)
            self.head = buf
            return b""
        answer = upgrade_response(buf[:end])
        self.head = None
        self._write(answer)
        return buf[end + 4 :]

    def _text(self, payload: bytes) -> None:
        try:
            frame = frames.decode_client_frame(payload)
        except FrameError as exc:
            self.close(exc.code)
            return
        transport = self.transport
        match frame:
            case frames.Hello() if not (
                self.welcomed or transport is None or transport.is_closing()
            ):
                floor = self.floor
                floor.sessions += 1
                self.welcomed = True
                session = f"{floor.name}.{floor.sessions}"
                welcome = frames.encode_welcome(session, floor.name, "", HEARTBEAT_S, 0)
                self._write(frames.ws_text_frame(welcome))
                floor.conns[self] = transport
            case frames.Ping():
                self._write(PONG_FRAME)
            case _:
                pass  # a second hello, acks, pongs

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self, code: int) -> None:
        """Send a close frame with ``code`` (none for 1005) and close after it is written."""
        self.floor.conns.pop(self, None)
        if self.head is None:
            self._write(control_frame(wsproto.OP_CLOSE, b"" if code == 1005 else code.to_bytes(2)))
        if self.transport is not None:
            self.transport.close()


# -- the internal HTTP port ------------------------------------------------------------------------


class Target(msgspec.Struct):
    all: bool = False


class Publish(msgspec.Struct):
    """``POST /v1/messages`` as the benchmarks send it; other fields are ignored."""

    to: Target
    event: str
    data: msgspec.Raw = msgspec.Raw(b"null")


_publish = msgspec.json.Decoder(Publish)
REASONS: Final = {
    200: b"OK",
    202: b"Accepted",
    400: b"Bad Request",
    404: b"Not Found",
    422: b"Unprocessable Content",
    503: b"Service Unavailable",
}


def error(code: str, message: str) -> bytes:
    return orjson.dumps({"code": code, "message": message})


class Internal(asyncio.Protocol):
    """One connection to the internal port: HTTP/1.1 with keep-alive, parsed by httptools."""

    def __init__(self, floor: Floor, bus: Bus | None) -> None:
        self.floor = floor
        self.bus = bus
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._answer(400, JSON, error("bad_request", str(exc)), keep=False)

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        path = self.url.partition(b"?")[0]
        status, ctype, body = self.route(method, path, b"".join(self.body))
        self._answer(status, ctype, body, keep=self.parser.should_keep_alive())

    def route(self, method: bytes, path: bytes, body: bytes) -> tuple[int, bytes, bytes]:
        match method, path:
            case b"POST", b"/v1/messages":
                return self.publish(body)
            case b"GET", b"/readyz":
                ready = {"status": "ready", "node": self.floor.name, "reasons": []}
                return 200, JSON, orjson.dumps(ready)
            case b"GET", b"/healthz":
                return 200, JSON, b'{"status":"ok"}'
            case b"GET", b"/metrics":
                return 200, TEXT, b"# bench.floor exports no metrics\n"
            case b"POST", b"/v1/tokens":
                return 200, JSON, b'{"token":"floor"}'  # never checked
        what = (method + b" " + path).decode(errors="replace")
        return 404, JSON, error("not_found", f"bench.floor has no {what}")

    def publish(self, body: bytes) -> tuple[int, bytes, bytes]:
        try:
            req = _publish.decode(body)
        except msgspec.DecodeError as exc:
            return 422, JSON, error("invalid_request", str(exc))
        if not req.to.all:
            return 422, JSON, error("unsupported_target", 'the floor only broadcasts ("all")')
        now_ms = int(time.time() * 1000)
        mid, offset, frame = self.floor.encode(req.event, req.data, now_ms)
        online: int | None = None
        if self.bus is None:
            self.floor.deliver(frame)
            online = len(self.floor.conns)
        elif not self.bus.publish(frame):
            return 503, JSON, error("broker_unavailable", "no Redis connection")
        answer = {"id": mid, "streams": {ALL: offset}, "online_sessions": online}
        return 202, JSON, orjson.dumps(answer)

    def _answer(self, status: int, ctype: bytes, body: bytes, keep: bool) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        reason = REASONS.get(status, b"Error")
        self.transport.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n%s"
            % (status, reason, ctype, len(body), b"" if keep else b"Connection: close\r\n", body)
        )
        if not keep:
            self.transport.close()


# -- Redis pub/sub between workers ------------------------------------------------------------


def resp(*parts: bytes) -> bytes:
    """A Redis command in RESP."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out += [b"$%d\r\n" % len(part), part, b"\r\n"]
    return b"".join(out)


class RedisLink(asyncio.Protocol):
    """One raw connection to Redis; every reply, parsed by hiredis, goes to ``on_reply``."""

    def __init__(
        self, on_reply: Callable[[object], None], on_lost: Callable[[Exception | None], None]
    ) -> None:
        self.reader = hiredis.Reader()
        self.on_reply = on_reply
        self.on_lost = on_lost
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.on_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            self.on_reply(reply)


class Bus:
    """PUBLISH on one Redis connection, SUBSCRIBE on another.

    After :meth:`start`, every frame any worker publishes is handed to ``deliver``, in Redis's
    order. A lost connection calls ``on_lost`` once with the reason: the floor does not reconnect,
    its worker stops. Call :meth:`close` when done."""

    def __init__(
        self, url: str, deliver: Callable[[bytes], None], on_lost: Callable[[str], None]
    ) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 6379
        self.auth = b""
        if parts.password:
            user = [parts.username.encode()] if parts.username else []
            self.auth = resp(b"AUTH", *user, parts.password.encode())
        self.deliver = deliver
        self.on_lost = on_lost
        self.closing = False
        self.pub: RedisLink | None = None
        self.sub: RedisLink | None = None
        self.subscribed: asyncio.Future[None] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.subscribed = loop.create_future()
        _, self.sub = await loop.create_connection(
            lambda: RedisLink(self._on_message, self._lost), self.host, self.port
        )
        _, self.pub = await loop.create_connection(
            lambda: RedisLink(self._on_publish_reply, self._lost), self.host, self.port
        )
        for link in (self.sub, self.pub):
            assert link.transport is not None
            link.transport.write(self.auth)
        assert self.sub.transport is not None
        self.sub.transport.write(resp(b"SUBSCRIBE", CHANNEL))
        async with asyncio.timeout(SUBSCRIBE_TIMEOUT_S):
            await self.subscribed

    def publish(self, frame: bytes) -> bool:
        """Send PUBLISH (its reply is not awaited); False when the connection is gone."""
        link = self.pub
        if link is None or link.transport is None or link.transport.is_closing():
            return False
        link.transport.write(resp(b"PUBLISH", CHANNEL, frame))
        return True

    def _on_message(self, reply: object) -> None:
        if type(reply) is list and len(reply) == 3:
            if reply[0] == b"message":
                self.deliver(reply[2])
            elif reply[0] == b"subscribe" and self.subscribed and not self.subscribed.done():
                self.subscribed.set_result(None)
        elif isinstance(reply, hiredis.ReplyError):
            if self.subscribed and not self.subscribed.done():
                self.subscribed.set_exception(RuntimeError(f"SUBSCRIBE: {reply}"))
            else:
                say(f"redis (subscriber): {reply}")

    def _on_publish_reply(self, reply: object) -> None:
        if isinstance(reply, hiredis.ReplyError):
            say(f"redis (publisher): {reply}")

    def _lost(self, exc: Exception | None) -> None:
        if not self.closing:
            self.closing = True
            self.on_lost(f"redis connection lost: {exc!r}")

    def close(self) -> None:
        self.closing = True
        for link in (self.pub, self.sub):
            if link is not None and link.transport is not None:
                link.transport.close()


# -- processes -----------------------------------------------------------------------------------


async def serve(a: argparse.Namespace) -> int:
    """Run one worker until SIGTERM/SIGINT (0) or until its Redis connection is lost (1)."""
    loop = asyncio.get_running_loop()
    floor = Floor(f"floor-{a.index}")
    stop = asyncio.Event()
    failed: list[str] = []

    def lost(reason: str) -> None:
        failed.append(reason)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    bus: Bus | None = None
    if a.redis_url:
        bus = Bus(a.redis_url, floor.deliver, lost)
        await bus.start()
    clients = await loop.create_server(
        lambda: Client(floor), a.host, a.port, reuse_port=True, backlog=BACKLOG
    )
    internal = await loop.create_server(
        lambda: Internal(floor, bus), a.host, a.internal_port, backlog=BACKLOG
    )
    say(
        f"{floor.name}: clients on {a.host}:{a.port}, internal API on {a.host}:{a.internal_port}"
        + (f", Redis {bus.host}:{bus.port}" if bus else "")
    )
    await stop.wait()
    clients.close()
    internal.close()
    for client in list(floor.conns):
        client.close(1001)
    if bus is not None:
        bus.close()
    await asyncio.sleep(0)  # let the closes run
    for reason in failed:
        say(f"{floor.name}: {reason}")
    return 1 if failed else 0


def supervise(a: argparse.Namespace) -> int:
    """Run ``a.workers`` workers until SIGTERM/SIGINT, which is forwarded to them, or until one of
    them exits (then the others are stopped too, and the exit status is not 0)."""
    procs: list[subprocess.Popen[bytes]] = []
    stopping = False  # by a signal, as asked

    def forward(signum: int, _: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for i in range(a.workers):
        argv = [sys.executable, "-m", "bench.floor", str(a.port), str(a.internal_port + i)]
        argv += ["--host", a.host, "--index", str(i)]
        if a.redis_url:
            argv += ["--redis-url", a.redis_url]
        procs.append(
            subprocess.Popen(argv, preexec_fn=procstat.die_with_parent)  # noqa: PLW1509 (only prctl)
        )
    if not a.redis_url:
        say("no --redis-url: a publish reaches only the connections of the worker that took it")
    while not stopping and all(p.poll() is None for p in procs):
        time.sleep(0.2)
    crashed = not stopping
    if crashed:
        say("a worker exited; stopping the others")
        forward(signal.SIGTERM, None)
    deadline = time.monotonic() + STOP_GRACE_S
    worst = 0
    for proc in procs:
        try:
            code = proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        worst = max(worst, abs(code))
    return max(worst, 1) if crashed else worst


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.floor",
        description="The benchmarks' floor: raw uvloop writing one pre-encoded frame.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("port", type=int, help="client port (shared by the workers: SO_REUSEPORT)")
    p.add_argument("internal_port", type=int, help="internal API port of worker 0 (worker i: +i)")
    p.add_argument("--workers", type=int, default=1, help="worker processes under a supervisor")
    p.add_argument("--redis-url", help="redis://host:port: broadcasts go through its pub/sub")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)  # set by supervise()
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if a.workers > 1:
        return supervise(a)
    return int(uvloop.run(serve(a)))


if __name__ == "__main__":
    sys.exit(main())
