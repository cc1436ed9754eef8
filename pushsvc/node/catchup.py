"""Catching up from history when the bus lost envelopes, so no live session silently misses one.

The bus numbers envelopes cluster-wide (``Envelope.seq``). A node notices a loss three ways:
a jump in ``seq`` between two envelopes; the bus telling it the subscription was re-established
(``on_resync``); or the periodic position check finding the bus ahead of what arrived here for
longer than one check interval (a subscription that died without a word).

Then it *holds* the fan-out (new envelopes wait), reads every locally subscribed stream's history
from just before the newest offset of that stream that reached it (:mod:`pushsvc.core.marks`:
positions are stream ids, never a node's wall clock), queues those entries first and the held
envelopes after them. Sessions drop what they already have by offset, so a message is never
written twice and never skipped.

The ``stop_bus`` fault (game days, :mod:`pushsvc.node.faults`) drops every envelope here and
suspends all three ways of noticing, so the node looks like one whose subscription died without a
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

CHECK_INTERVAL = 1.0


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
        self.seq = 0  # newest envelope seq seen here
        self.marks = marks.StreamMarks()  # per locally read stream, the newest offset seen here
        self._since: dict[str, offsets.Position] | None = None  # catch-up wanted from these marks
        self._running = False
        self._suspect: int | None = None  # bus position seen ahead of us at the last check
        self.recoveries = 0

    def envelope(self, envelope: Envelope) -> None:
        """Bus callback: check the sequence, then hand the envelope to the fan-out."""
        if self._faults.stop_bus:
            return
        metrics.bus_received.inc()
        seq = envelope.seq
        if seq and self.seq and seq > self.seq + 1:
            log.warning(
                "bus gap", extra={"node": self._node_id, "expected": self.seq + 1, "got": seq}
            )
            self.request()
        self.seq = max(self.seq, seq)
        first = next(iter(envelope.offsets.values()), None)
        if seq and first is not None:  # a live envelope: it was appended a moment ago
            self._clock.observe(offsets.parse(first), int(time.time() * 1000))
        index = self._index
        for stream, offset in envelope.offsets.items():
            if index.get(stream) is not None:
                self.marks.seen(stream, offsets.parse(offset))
        self._fanout.submit(envelope)

    def start(self, stream: str, end: str | None) -> None:
        """A session starts reading ``stream``, whose newest offset is ``end`` (None: empty).
        Ignored when no local session reads it (any more: it closed while starting)."""
        if self._index.get(stream) is not None:
            self.marks.start(stream, None if end is None else offsets.parse(end))

    def knows(self, stream: str) -> bool:
        return self.marks.knows(stream)

    def forget(self, streams: tuple[str, ...]) -> None:
        """``streams`` of a closed session: drop the marks of those no local session reads."""
        index = self._index
        for stream in streams:
            if index.get(stream) is None:
                self.marks.forget(stream)

    def resync(self) -> None:
        """Bus callback: the subscription came back after a loss."""
        if not self._faults.stop_bus:
            self.request()

    def restart(self) -> None:
        """The ``stop_bus`` fault was cleared: catch up on what it swallowed."""
        self._suspect = None
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
                    await asyncio.sleep(CHECK_INTERVAL)
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

    async def watch(self) -> None:
        """Compare the bus position with what arrived here, every second, until cancelled."""
        while True:
            await asyncio.sleep(CHECK_INTERVAL)
            if self._faults.stop_bus:
                continue
            seen = self.seq  # before asking: envelopes keep arriving while we wait
            try:
                position = await self._broker.bus.position()
            except (BrokerError, OSError):
                continue
            if position < seen:  # below what had already arrived: the counter restarted
                self.seq = position
                self._suspect = None
            elif position == self.seq:
                self._suspect = None
            elif self._suspect is not None and self.seq < self._suspect:
                log.warning(
                    "bus silent while behind",
                    extra={"node": self._node_id, "here": self.seq, "bus": position},
                )
                self._suspect = None
                self.seq = position
                self.request()
            else:
                self._suspect = position
