"""Catching up from history when the bus lost envelopes, so no live session silently misses one.

A node notices a loss two ways: an envelope whose ``after`` (the offset before it in its stream)
is newer than the newest offset of that stream that reached this node (a gap in that stream);
or the bus telling it the subscription was re-established (``on_resync``: the bus itself finds a
subscription that died without a word, see :mod:`pushsvc.broker.redis.bus`).

Then it *holds* the fan-out (new envelopes wait), reads every locally subscribed stream's history
from just before the newest offset of that stream that reached it (:mod:`pushsvc.core.marks`:
positions are stream ids, never a node's wall clock), queues those entries first and the held
envelopes after them. Sessions drop what they already have by offset, so a message is never
written twice and never skipped.

The ``stop_bus`` fault (game days, :mod:`pushsvc.node.faults`) drops every envelope here and
suspends both ways of noticing, so the node looks like one whose subscription died without a
word and whose self-healing failed; :meth:`CatchUp.restart` ends it with a catch-up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from pushsvc.core import marks, offsets
from pushsvc.errors import BrokerError
from pushsvc.telemetry import metrics
from pushsvc.types import Envelope

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine
    from typing import Any

    from pushsvc.broker.base import Broker
    from pushsvc.core.clock import StreamClock
    from pushsvc.core.index import SubscriberIndex
    from pushsvc.node.fanout import FanOut
    from pushsvc.node.faults import Faults
    from pushsvc.node.session import Session

log = logging.getLogger(__name__)

RETRY_INTERVAL = 1.0  # between attempts to read history while the broker fails


class CatchUp:
    """Watches the bus for losses and catches ``fanout`` up from ``broker``'s history for the
    streams of ``index``; ``spawn`` runs a tracked task (``Node.spawn``)."""

    def __init__(
        self,
        node_id: str,
        broker: Broker,
        fanout: FanOut,
        index: SubscriberIndex[Session],
        clock: StreamClock,
        faults: Faults,
        spawn: Callable[[Coroutine[Any, Any, Any]], object],
        history_size: int,
    ) -> None:
        self._node_id = node_id
        self._broker = broker
        self._fanout = fanout
        self._index = index
        self._clock = clock
        self._faults = faults
        self._spawn = spawn
        self._history_size = history_size
        self.marks = marks.StreamMarks()  # per locally read stream, the newest offset seen here
        self._since: dict[str, offsets.Position] | None = None  # catch-up wanted from these marks
        self._running = False
        self.recoveries = 0

    def envelope(self, envelope: Envelope) -> None:
        """Bus callback: check each stream for a gap, then hand the envelope to the fan-out."""
        if self._faults.stop_bus:
            return
        metrics.bus_received.inc()
        after = envelope.after
        index = self._index
        marks_ = self.marks
        for stream, offset in envelope.offsets.items():
            if index.get(stream) is None:
                continue
            position = offsets.parse(offset)
            if after is not None:
                mark = marks_.get(stream)
                if mark is not None and offsets.parse(after) > mark:
                    log.warning(
                        "bus gap",
                        extra={"node": self._node_id, "stream": stream, "after": after},
                    )
                    self.request()  # snapshots the marks before this envelope moves them
                self._clock.observe(position, int(time.time() * 1000))  # appended just now
            marks_.seen(stream, position)
        self._fanout.submit(envelope)

    def start(self, stream: str, end: str | None) -> None:
        """A session starts reading ``stream``, whose newest offset is ``end`` (None: empty).
        Ignored when no local session reads it (any more: it closed while starting)."""
        if self._index.get(stream) is not None:
            self.marks.start(stream, None if end is None else offsets.parse(end))

    def knows(self, stream: str) -> bool:
        return self.marks.knows(stream)

    def forget(self, streams: tuple[str, ...]) -> None:
        """``streams`` of a closed session: drop the marks of those no local session reads, and
        stop following them on the bus."""
        index = self._index
        gone = [stream for stream in streams if index.get(stream) is None]
        for stream in gone:
            self.marks.forget(stream)
        if gone:
            self._broker.bus.unfollow(gone)

    def resync(self) -> None:
        """Bus callback: the subscription came back after a loss."""
        if not self._faults.stop_bus:
            self.request()

    def restart(self) -> None:
        """The ``stop_bus`` fault was cleared: catch up on what it swallowed."""
        self.request()

    def request(self) -> None:
        """Catch up from the marks as they are now (merged with any pending ask)."""
        self._since = marks.merge(self._since, self.marks.snapshot())
        self._fanout.hold()
        if not self._running:
            self._running = True
            self._spawn(self._run())

    async def _run(self) -> None:
        try:
            while self._since is not None:
                since, self._since = self._since, None
                try:
                    entries = await self._read(since)
                except (BrokerError, OSError) as exc:
                    log.warning("catch-up failed, retrying", extra={"error": str(exc)})
                    self._since = marks.merge(self._since, since)
                    await asyncio.sleep(RETRY_INTERVAL)
                    continue
                self._fanout.release(entries)
                self.recoveries += 1
                metrics.catchups.inc()
                metrics.catchup_messages.inc(len(entries))
                log.info(
                    "caught up",
                    extra={"node": self._node_id, "streams": len(since), "entries": len(entries)},
                )
        finally:
            self._running = False
            self._fanout.release([])

    async def _read(self, since: dict[str, offsets.Position]) -> list[Envelope]:
        current = self.marks.snapshot()  # streams first read after the loss was noticed
        reads: list[tuple[str, str | None]] = []
        for stream in self._index.streams():
            mark = since.get(stream, current.get(stream))
            if mark is not None:  # else its first session is still starting: nothing was missed
                reads.append((stream, marks.read_after(mark)))
        read = await self._broker.history.read_many(reads, self._history_size)
        out: list[Envelope] = []
        for (stream, _), entries in zip(reads, read, strict=True):
            out.extend(Envelope(e.message, {stream: e.offset}, "history") for e in entries)
            if entries:
                self.marks.seen(stream, offsets.parse(entries[-1].offset))
        return out
