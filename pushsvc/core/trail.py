"""A message's delivery trail and the state it adds up to (``GET /v1/messages/{id}``).

Deliveries are kept per session (a device that reconnected shows both sessions); the state is
decided per device: a device has acked when any of its sessions acked.

States: ``pending`` (not yet written to any device) · ``delivered`` (written; acks not all in, or
not asked for) · ``partially_acked`` · ``acked`` (every device it was written to acked) ·
``expired`` (its ttl passed before any device got it) · ``lost`` (written, never acked, ttl passed).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class Delivery:
    device: str
    session: str
    node: str
    sent_at: float | None = None
    acked_at: float | None = None
    attempts: int = 0


@dataclass(slots=True)
class Trail:
    id: str
    event: str
    published_at: float
    expires_at: float
    ack: bool
    streams: dict[str, str]
    deliveries: dict[str, Delivery] = field(default_factory=dict)  # by session
    sent_by_node: dict[str, int] = field(default_factory=dict)  # writes of ack:false messages
    pushed: dict[str, float] = field(default_factory=dict)  # device -> Web Push accepted at

    def record_sent(self, device: str, session: str, node: str, at: float, attempts: int) -> None:
        d = self.deliveries.get(session)
        if d is None:
            d = self.deliveries[session] = Delivery(device, session, node)
        if d.sent_at is None:
            d.sent_at = at
        d.attempts = max(d.attempts, attempts)

    def record_acked(self, device: str, session: str, node: str, at: float) -> bool:
        """Record an ack; return True when it is the device's first ack of this message."""
        first = not any(
            d.acked_at is not None for d in self.deliveries.values() if d.device == device
        )
        d = self.deliveries.get(session)
        if d is None:
            d = self.deliveries[session] = Delivery(device, session, node, attempts=1)
        if d.acked_at is None:
            d.acked_at = at
        return first


def state(trail: Trail, now: float) -> str:
    """The state of ``trail`` at ``now`` (see the module docstring)."""
    devices: dict[str, bool] = {}
    for d in trail.deliveries.values():
        if d.sent_at is not None or d.acked_at is not None:
            devices[d.device] = devices.get(d.device, False) or d.acked_at is not None
    written = bool(devices) or any(trail.sent_by_node.values())
    if not written:
        return "expired" if now >= trail.expires_at else "pending"
    if not trail.ack:
        return "delivered"
    acked = sum(devices.values())
    if acked and acked == len(devices):
        return "acked"
    if acked:
        return "partially_acked"
    return "lost" if now >= trail.expires_at else "delivered"
