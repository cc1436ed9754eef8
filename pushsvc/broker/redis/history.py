"""Stream history in Redis Streams: entry ids are the offsets, field ``m`` the message as JSON.

Entries are appended by the publish script (:mod:`pushsvc.broker.redis.scripts`) and read here.
An entry holds its message (field ``m``) or, for a message appended to several streams, its id
(field ``r``): the message is in its body key, fetched in one pipelined round trip per read.
Like the memory history, a read leaves out entries published more than ``ttl`` seconds ago, judged
in Redis's clock: an entry's id is the time Redis appended it, and every read asks Redis for its
``TIME`` in the same round trip, so a node whose clock is off neither loses entries nor keeps
expired ones.
An entry that does not decode is left out, counted in
``pushsvc_history_undecodable_total``, and the others are returned.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import msgspec

from pushsvc.broker.base import History
from pushsvc.broker.keys import Keyspace
from pushsvc.broker.redis.link import Link
from pushsvc.core import offsets
from pushsvc.telemetry import metrics
from pushsvc.types import HistoryEntry, Message

log = logging.getLogger(__name__)

READ_CHUNK = 1000  # XRANGEs per round trip in read_many


def redis_ms(reply: Any) -> int:
    """Redis's clock in ms from a ``TIME`` reply (seconds, microseconds)."""
    seconds, micros = reply
    return int(seconds) * 1000 + int(micros) // 1000


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
            start = offsets.range_start(after)
            if start is not None:
                wanted.append((i, start, stream))
        for first in range(0, len(wanted), READ_CHUNK):
            chunk = wanted[first : first + READ_CHUNK]
            clock, *replies = await self._link.pipeline([
                ("TIME",),
                *(
                    ("XRANGE", self._keys.stream(stream), start, "+", "COUNT", limit)
                    for _, start, stream in chunk
                ),
            ])  # fmt: skip
            raw = [[self._raw(item) for item in reply] for reply in replies]
            bodies = await self._bodies({r for entries in raw for _, r, _ in entries if r})
            horizon = redis_ms(clock) - self._ttl_ms
            bad = 0
            for (i, _, stream), entries in zip(chunk, raw, strict=True):
                kept = []
                for offset, ref, inline in entries:
                    value = inline if ref is None else bodies.get(ref)
                    if ref is not None and value is None:  # its body expired: so did the entry
                        continue
                    message = self._message(value)
                    if message is None:
                        bad += 1
                        log.warning("undecodable history entry skipped",
                                    extra={"stream": stream, "offset": offset})  # fmt: skip
                    elif offsets.parse(offset)[0] >= horizon:
                        kept.append(HistoryEntry(offset, message))
                out[i] = kept
            if bad:
                metrics.history_undecodable.inc(bad)
        return out

    async def last_offset(self, stream: str) -> str | None:
        reply = await self._link.call("XREVRANGE", self._keys.stream(stream), "+", "-", "COUNT", 1)
        return reply[0][0].decode() if reply else None

    async def _bodies(self, refs: set[str]) -> dict[str, bytes | None]:
        """The stored bodies of the messages ``refs`` (None: gone), one round trip."""
        if not refs:
            return {}
        wanted = sorted(refs)
        found = await self._link.pipeline([("GET", self._keys.body(m)) for m in wanted])
        return dict(zip(wanted, found, strict=True))

    @staticmethod
    def _raw(item: Any) -> tuple[str, str | None, bytes | None]:
        """One raw XRANGE item, ``[id, [field, value, ...]]``: its offset, then the id of the
        message it refers to (field ``r``) or None, and its message JSON (field ``m``) or None."""
        entry_id, fields = item
        if len(fields) == 2:
            field, value = fields
            if field == b"m":
                return entry_id.decode(), None, value
            if field == b"r":
                return entry_id.decode(), value.decode(errors="replace"), None
        return entry_id.decode(), None, None  # not an entry we wrote: undecodable

    def _message(self, value: bytes | None) -> Message | None:
        if value is None:
            return None
        try:
            return self._decoder.decode(value)
        except msgspec.DecodeError:
            return None
