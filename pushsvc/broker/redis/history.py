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

With ``min_replicas`` > 0 a read is refused (:class:`pushsvc.errors.BrokerUnavailable`, in the
same round trip's ``ROLE``) while the master has fewer replicas connected: it may hold appends
that ``WAIT`` never confirmed (a publish refused with 503, or a master that lost its replicas to
a failover), and a device must not be shown what the next failover may take back.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import msgspec

from pushsvc.broker.base import History
from pushsvc.broker.keys import partition_of
from pushsvc.broker.redis.link import Link
from pushsvc.broker.redis.partitions import Partitions, together
from pushsvc.core import offsets
from pushsvc.errors import BrokerUnavailable
from pushsvc.telemetry import metrics
from pushsvc.types import HistoryEntry, Message

log = logging.getLogger(__name__)

READ_CHUNK = 1000  # XRANGEs per round trip in read_many


def redis_ms(reply: Any) -> int:
    """Redis's clock in ms from a ``TIME`` reply (seconds, microseconds)."""
    seconds, micros = reply
    return int(seconds) * 1000 + int(micros) // 1000


class RedisHistory(History):
    def __init__(self, parts: Partitions, ttl: float, min_replicas: int = 0) -> None:
        self._parts = parts
        self._replicas = min_replicas
        self._keys = parts.keys
        self._ttl_ms = int(ttl * 1000)
        self._decoder = msgspec.json.Decoder(Message)

    async def read(self, stream: str, after: str | None, limit: int) -> list[HistoryEntry]:
        return (await self.read_many([(stream, after)], limit))[0]

    async def read_many(
        self, reads: Sequence[tuple[str, str | None]], limit: int
    ) -> list[list[HistoryEntry]]:
        """One ``XRANGE`` per read, :data:`READ_CHUNK` of them per round trip (per partition
        group: on Redis Cluster the groups are read at once)."""
        out: list[list[HistoryEntry]] = [[] for _ in reads]
        if limit <= 0:
            return out
        groups: dict[int, list[tuple[int, str, str]]] = {}
        for i, (stream, after) in enumerate(reads):
            start = offsets.range_start(after)
            if start is not None:
                group = self._parts.group(partition_of(stream))
                groups.setdefault(group, []).append((i, start, stream))
        await together([
            self._read_group(group, wanted, limit, out) for group, wanted in groups.items()
        ])  # fmt: skip
        return out

    async def _read_group(
        self, group: int, wanted: list[tuple[int, str, str]], limit: int,
        out: list[list[HistoryEntry]],
    ) -> None:  # fmt: skip
        link = self._parts.link(group)
        for first in range(0, len(wanted), READ_CHUNK):
            chunk = wanted[first : first + READ_CHUNK]
            role = [("ROLE",)] if self._replicas else []
            clock, *replies = await link.pipeline([
                ("TIME",),
                *(
                    ("XRANGE", self._keys.stream(stream), start, "+", "COUNT", limit)
                    for _, start, stream in chunk
                ),
                *role,
            ])  # fmt: skip
            if role:
                replicas = len(replies.pop()[2])
                if replicas < self._replicas:
                    raise BrokerUnavailable(
                        f"{replicas} of {self._replicas} redis replicas connected: history is "
                        "not read until they are back"
                    )
            raw = [[self._raw(item) for item in reply] for reply in replies]
            bodies = await self._bodies(link, {
                self._parts.body(r, stream)
                for (_, _, stream), entries in zip(chunk, raw, strict=True)
                for _, r, _ in entries
                if r
            })  # fmt: skip
            horizon = redis_ms(clock) - self._ttl_ms
            bad = 0
            for (i, _, stream), entries in zip(chunk, raw, strict=True):
                kept = []
                for offset, ref, inline in entries:
                    value = inline if ref is None else bodies.get(self._parts.body(ref, stream))
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

    async def last_offset(self, stream: str) -> str | None:
        link = self._parts.link(self._parts.group(partition_of(stream)))
        reply = await link.call("XREVRANGE", self._keys.stream(stream), "+", "-", "COUNT", 1)
        return reply[0][0].decode() if reply else None

    @staticmethod
    async def _bodies(link: Link, keys: set[str]) -> dict[str, bytes | None]:
        """The stored bodies under ``keys`` (None: gone), one round trip."""
        if not keys:
            return {}
        wanted = sorted(keys)
        found = await link.pipeline([("GET", key) for key in wanted])
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
