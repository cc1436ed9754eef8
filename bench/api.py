"""A small HTTP/1.1 client for the node's internal API, built for timing publishes.

It keeps a pool of keep-alive connections and takes the publish timestamp
(``time.time_ns()``) immediately before the request bytes are written, so publish → client latency
starts when the request leaves the benchmark, not when an HTTP library starts preparing it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import urlsplit

import orjson


class ApiError(Exception):
    """An HTTP exchange failed or returned an unexpected status."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body[:300]!r}")
        self.status = status
        self.body = body


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    sent_ns: int
    """``time.time_ns()`` just before the request was written."""
    elapsed_ns: int
    """Request written → response read, in ``perf_counter`` nanoseconds."""

    def json(self) -> object:
        return orjson.loads(self.body)


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer


class ApiClient:
    """Keep-alive HTTP client for one base URL (``http://host:port``), at most ``size`` in flight.

    Use as an async context manager; after ``__aexit__`` every connection is closed.
    """

    def __init__(self, base_url: str, api_key: str | None, size: int = 8) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"only http:// URLs are supported, got {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.prefix = parts.path.rstrip("/")
        self.api_key = api_key
        self._idle: list[_Conn] = []
        self._slots = asyncio.Semaphore(size)

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        for conn in self._idle:
            conn.writer.close()
        self._idle.clear()

    async def post_json(self, path: str, body: object, auth: bool = True) -> Response:
        return await self.request("POST", path, orjson.dumps(body), auth)

    async def get(self, path: str, auth: bool = False) -> Response:
        return await self.request("GET", path, b"", auth)

    async def request(self, method: str, path: str, body: bytes, auth: bool) -> Response:
        head = [
            f"{method} {self.prefix}{path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "Accept: application/json",
        ]
        if body or method == "POST":
            head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        if auth and self.api_key:
            head.append(f"Authorization: Bearer {self.api_key}")
        request = ("\r\n".join(head) + "\r\n\r\n").encode() + body
        async with self._slots:
            while True:
                conn, reused = self._take()
                if conn is None:
                    conn = await self._connect()
                try:
                    sent_ns = time.time_ns()
                    t0 = time.perf_counter_ns()
                    conn.writer.write(request)
                    status, payload, keep = await _read_response(conn.reader)
                    elapsed = time.perf_counter_ns() - t0
                except (asyncio.IncompleteReadError, ConnectionError) as exc:
                    conn.writer.close()
                    # A kept-alive connection the server closed while idle: nothing was read,
                    # so the server did not take the request. Retry once on a fresh one.
                    partial = getattr(exc, "partial", b"")
                    if reused and not partial:
                        continue
                    raise
                except BaseException:
                    conn.writer.close()
                    raise
                break
            if keep:
                self._idle.append(conn)
            else:
                conn.writer.close()
        return Response(status, payload, sent_ns, elapsed)

    def _take(self) -> tuple[_Conn | None, bool]:
        """An idle connection the server has not closed, if any, and whether it is reused."""
        while self._idle:
            conn = self._idle.pop()
            if conn.reader.at_eof() or conn.writer.is_closing():
                conn.writer.close()
                continue
            return conn, True
        return None, False

    async def _connect(self) -> _Conn:
        reader, writer = await asyncio.open_connection(self.host, self.port, limit=2**24)
        return _Conn(reader, writer)


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = await _read_chunked(reader)
    elif "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    else:
        body = await reader.read()
        return status, body, False
    keep = headers.get("connection", "").lower() != "close"
    return status, body, keep


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            # Trailers (if any) end with an empty line.
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)
