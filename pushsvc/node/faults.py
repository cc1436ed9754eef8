"""Faults a node injects into itself on request, for game days (docs/runbooks.md).

Only reachable through ``POST /v1/admin/faults`` on a node started with
``--enable-fault-injection``; a node without the flag has them all off, always.

- ``drop_deliveries``: the fraction of messages this node silently does not write to its sessions
  (live fan-out, redelivery and replay alike). The choice is a hash of the message id, so every
  attempt of a dropped message is dropped here too and redelivery cannot heal it: a real loss.
  The node still counts the delivery as *expected* (it believes it owes it), which is what the
  monitor reconciles. Each message it drops is logged once (``delivery dropped by a fault``,
  with its id), so a game day can tell what it dropped on purpose from what went missing.
- ``stop_bus``: envelopes from the bus no longer reach the fan-out, and the self-healing that
  would notice (the catch-up's gap checks and resyncs) is suspended: a wedged subscription
  whose node keeps its heartbeat. Clearing it catches up from history.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass, field

from pushsvc.records import InjectedFaults

log = logging.getLogger(__name__)

LOGGED = 100_000  # dropped ids remembered (each is logged once), per node process


@dataclass(slots=True)
class Faults:
    drop_deliveries: float = 0.0
    stop_bus: bool = False
    logged: set[str] = field(default_factory=set)  # ids whose drop was logged

    def drops(self, message_id: str) -> bool:
        """True when this node must silently not write ``message_id``."""
        fraction = self.drop_deliveries
        if not (fraction > 0 and zlib.crc32(message_id.encode()) / 2**32 < fraction):
            return False
        if message_id not in self.logged and len(self.logged) < LOGGED:
            self.logged.add(message_id)
            log.warning("delivery dropped by a fault", extra={"message_id": message_id})
        return True

    def describe(self) -> InjectedFaults:
        return InjectedFaults(drop_deliveries=self.drop_deliveries, stop_bus=self.stop_bus)
