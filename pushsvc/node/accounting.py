"""Batches the node's writes to the broker — ledger events and session records — off the hot path.

The fan-out and the ack handler only append to lists; :meth:`Accounting.run` flushes them every
``interval`` seconds in one round trip per kind. While the broker is down the batches are kept
(up to ``limit`` events, oldest dropped first and counted) and written when it is back; the log
says so once when the flushes start failing and once when one works again, not every interval.

The ledger counts what it is given for the monitor's reconciliation (docs/monitoring.md): a
:class:`Published` record becomes an :class:`Accepted` one here, because ``Broker.publish`` has
already started the message's trail and what is left to record is that this node published it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from pushsvc.broker.base import (
    Accepted,
    Acked,
    Broker,
    LedgerEvent,
    Published,
    SessionInfo,
    split_device_key,
)
from pushsvc.errors import BrokerError

log = logging.getLogger(__name__)


Settle = Callable[[list[tuple[str, str, str, float]]], Awaitable[None]]


class Accounting:
    """``settle``: told of each batch of acks before it is recorded, as ``(message id, user,
    device, at)`` (the escalator's timers; called again if the write fails)."""

    def __init__(
        self,
        broker: Broker,
        node_id: str,
        interval: float,
        limit: int = 200_000,
        settle: Settle | None = None,
    ) -> None:
        self._broker = broker
        self._settle = settle
        self._node_id = node_id
        self._interval = interval
        self._limit = limit
        self.events: list[LedgerEvent] = []
        self.opened: list[SessionInfo] = []
        self.closed: list[str] = []
        self.dropped = 0
        self.failures = 0  # flushes failed in a row

    def record(self, event: LedgerEvent) -> None:
        if isinstance(event, Published):
            event = Accepted(event.message_id, self._node_id, event.ack)
        self.events.append(event)

    async def run(self) -> None:
        """Flush every ``interval`` until cancelled."""
        while True:
            await asyncio.sleep(self._interval)
            await self.flush()

    async def flush(self) -> None:
        """Write what has accumulated; keep it for the next flush if the broker fails."""
        events, opened, closed = self.events, self.opened, self.closed
        if not (events or opened or closed):
            return
        self.events, self.opened, self.closed = [], [], []
        registry = self._broker.registry
        try:
            if events:
                if self._settle is not None:
                    acks = [e for e in events if isinstance(e, Acked)]
                    if acks:
                        await self._settle([
                            (e.message_id, split_device_key(e.device)[0], e.device, e.at)
                            for e in acks
                        ])  # fmt: skip
                await self._broker.ledger.record(events)
                events = []
            if opened:
                await registry.add_sessions(opened)
                opened = []
            if closed:
                await registry.remove_sessions(self._node_id, closed)
                closed = []
        except (BrokerError, OSError) as exc:
            if not self.failures:
                log.warning("accounting flush failed, will retry", extra={"error": str(exc)})
            self.failures += 1
            self.events[:0] = events
            self.opened[:0] = opened
            self.closed[:0] = closed
            overflow = len(self.events) - self._limit
            if overflow > 0:
                del self.events[:overflow]
                self.dropped += overflow
        else:
            if self.failures:
                log.info("accounting flush works again", extra={"failed": self.failures})
                self.failures = 0
