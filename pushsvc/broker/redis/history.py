"""Stream history in Redis Streams: entry ids are the offsets, field ``m`` the message as JSON.

Entries are appended by the publish script (:mod:`pushsvc.broker.redis.scripts`) and read here.
Like the memory history, a read leaves out entries published more than ``ttl`` seconds ago.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import msgspec

from pushsvc.broker.base import History
from pushsvc.broker.keys import Keyspace
from pushsvc.broker.redis.link import Link
from pushsvc.core import offsets
from pushsvc.types import HistoryEntry, Message

READ_CHUNK = 1000  # XRANGEs per round trip in read_many

#: Redis stream ids are two unsigned 64-bit integers.
_U64_MAX = (1 << 64) - 1


def range_start(after: str | None) -> str | None:
    """The XRANGE start for entries after ``after``; None when nothing can follow it.

    Raises :class:`pushsvc.errors.FrameError` when ``after`` is not an offset.
    """
    if after is None:
        return "-"
    ms, seq = offsets.parse(after)
    if ms > _U64_MAX or (ms == _U64_MAX and seq >= _U64_MAX):
        return None
    if seq >= _U64_MAX:
        return f"{ms + 1}-0"
    return f"({ms}-{seq}"


class RedisHistory(History):
    def __init__(self, link: Link, keys: Keyspace, ttl: float) -> None:
        self._link = link
        self._keys = keys
        self._ttl_ms = int(ttl * 1000)
        self._decoder = msgspec.json.Decoder(Message)

    async def read(self, stream: str, after: str | None, limit: int) -> list[HistoryEntry]:
        return (await self.read_many([(stream, after)], limit))[0]

    async def read_many(
        self, reads: Sequence[tuple[str, str | None]], limit: int
    ) -> list[list[HistoryEntry]]:
        """One ``XRANGE`` per read, :data:`READ_CHUNK` of them per round trip."""
        out: list[list[HistoryEntry]] = [[] for _ in reads]
        if limit <= 0:
            return out
        wanted: list[tuple[int, str, str]] = []
        for i, (stream, after) in enumerate(reads):
            start = range_start(after)
            if start is not None:
                wanted.append((i, start, stream))
        for first in range(0, len(wanted), READ_CHUNK):
            chunk = wanted[first : first + READ_CHUNK]
            replies = await self._link.pipeline([
                ("XRANGE", self._keys.stream(stream), start, "+", "COUNT", limit)
                for _, start, stream in chunk
            ])  # fmt: skip
            horizon = int(time.time() * 1000) - self._ttl_ms
            for (i, _, _), reply in zip(chunk, replies, strict=True):
                entries = [self._entry(item) for item in reply]
                out[i] = [e for e in entries if e.message.ts >= horizon]
        return out

    async def last_offset(self, stream: str) -> str | None:
        reply = await self._link.call("XREVRANGE", self._keys.stream(stream), "+", "-", "COUNT", 1)
        return reply[0][0].decode() if reply else None

    def _entry(self, item: Any) -> HistoryEntry:
        """One raw XRANGE item, ``[id, [field, value, ...]]``."""
        entry_id, fields = item
        value = fields[fields.index(b"m") + 1]
        return HistoryEntry(entry_id.decode(), self._decoder.decode(value))
