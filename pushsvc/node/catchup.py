"""Catching up from history when the bus lost envelopes, so no live session silently misses one.

The bus numbers envelopes cluster-wide (``Envelope.seq``). A node notices a loss three ways:
a jump in ``seq`` between two envelopes; the bus telling it the subscription was re-established
(``on_resync``); or the periodic position check finding the bus ahead of what arrived here for
longer than one check interval (a subscription that died without a word).

Then it *holds* the fan-out (new envelopes wait), reads every locally subscribed stream's history
from just before the last envelope it did receive, queues those entries first and the held
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

from pushsvc.errors import BrokerError
from pushsvc.telemetry import metrics
from pushsvc.types import Envelope

if TYPE_CHECKING:
    from pushsvc.node.gateway import Node

log = logging.getLogger(__name__)

MARGIN_MS = 2000  # read history from this long before the last envelope that did arrive
CHECK_INTERVAL = 1.0


class CatchUp:
    def __init__(self, node: Node) -> None:
        self._node = node
        self.seq = 0  # newest envelope seq seen here
        self.last_ts = int(time.time() * 1000)  # publish time of the newest envelope seen here
        self._since: int | None = None  # catch-up wanted from this ms
        self._running = False
        self._suspect: int | None = None  # bus position seen ahead of us at the last check
        self.recoveries = 0

    def envelope(self, envelope: Envelope) -> None:
        """Bus callback: check the sequence, then hand the envelope to the fan-out."""
        if self._node.faults.stop_bus:
            return
        seq = envelope.seq
        if seq and self.seq and seq > self.seq + 1:
            log.warning(
                "bus gap", extra={"node": self._node.id, "expected": self.seq + 1, "got": seq}
            )
            self.request()
        if seq > self.seq:
            self.seq = seq
            self.last_ts = max(self.last_ts, envelope.message.ts)
        self._node.fanout.submit(envelope)

    def resync(self) -> None:
        """Bus callback: the subscription came back after a loss."""
        if not self._node.faults.stop_bus:
            self.request()

    def restart(self) -> None:
        """The ``stop_bus`` fault was cleared: catch up on what it swallowed."""
        self._suspect = None
        self.request()

    def request(self) -> None:
        """Catch up from before the last envelope that arrived (merged with any pending ask)."""
        since = self.last_ts - MARGIN_MS
        self._since = since if self._since is None else min(self._since, since)
        self._node.fanout.hold()
        if not self._running:
            self._running = True
            self._node.spawn(self._run())

    async def _run(self) -> None:
        node = self._node
        try:
            while self._since is not None:
                since, self._since = self._since, None
                try:
                    entries = await self._read(since)
                except (BrokerError, OSError) as exc:
                    log.warning("catch-up failed, retrying", extra={"error": str(exc)})
                    self._since = since if self._since is None else min(self._since, since)
                    await asyncio.sleep(CHECK_INTERVAL)
                    continue
                node.fanout.release(entries)
                self.recoveries += 1
                metrics.catchups.inc()
                metrics.catchup_messages.inc(len(entries))
                log.info(
                    "caught up", extra={"node": node.id, "since": since, "entries": len(entries)}
                )
        finally:
            self._running = False
            node.fanout.release([])

    async def _read(self, since_ms: int) -> list[Envelope]:
        node = self._node
        after = f"{max(0, since_ms)}-0"
        streams = list(node.index.streams())
        read = await node.broker.history.read_many(
            [(stream, after) for stream in streams], node.settings.history_size
        )
        out: list[Envelope] = []
        for stream, entries in zip(streams, read, strict=True):
            out.extend(Envelope(e.message, {stream: e.offset}, "history") for e in entries)
        return out

    async def watch(self) -> None:
        """Compare the bus position with what arrived here, every second, until cancelled."""
        while True:
            await asyncio.sleep(CHECK_INTERVAL)
            if self._node.faults.stop_bus:
                continue
            seen = self.seq  # before asking: envelopes keep arriving while we wait
            try:
                position = await self._node.broker.bus.position()
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
                    extra={"node": self._node.id, "here": self.seq, "bus": position},
                )
                self._suspect = None
                self.seq = position
                self.request()
            else:
                self._suspect = position
