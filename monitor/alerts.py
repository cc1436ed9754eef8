"""Which alerts the monitor raises, and when it sends what to Alertmanager: pure, ``now`` passed in.

Each evaluation states the alerts that *should* be active (:class:`Alert`, keyed by name and
node). :meth:`AlertBook.plan` turns that into what to post (docs/monitoring.md):

- a new alert is sent at once, ``startsAt`` now, ``endsAt = now + 4 * resend``;
- an active one is sent again every ``resend`` seconds (and at once when its annotations
  change), with the same ``startsAt`` and a fresh ``endsAt``: if the monitor dies, Alertmanager
  resolves it by itself four resends later;
- one that is no longer stated is sent once more with ``endsAt = now``: resolved.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from monitor.reconcile import NodeLoss
from pushsvc.assets import RUNBOOK_PLACEHOLDER

SERVICE = "pushsvc"


def runbook(base: str, alert: str) -> str:
    """The absolute link to ``alert``'s section of runbooks.md, with docs/ published at ``base``."""
    return f"{base.rstrip('/')}/runbooks.md#{alert.lower()}"


@dataclass(frozen=True, slots=True)
class Alert:
    name: str
    node: str
    severity: str
    annotations: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> tuple[str, str]:
        return (self.name, self.node)

    def labels(self) -> dict[str, str]:
        return {"alertname": self.name, "node": self.node, "severity": self.severity,
                "service": SERVICE}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Send:
    """One alert to post: active until ``ends_at`` (``ends_at == now``: resolved)."""

    alert: Alert
    starts_at: float
    ends_at: float
    resolved: bool = False


@dataclass(slots=True)
class _Active:
    alert: Alert
    since: float
    sent: float


@dataclass(slots=True)
class AlertBook:
    resend: float
    active: dict[tuple[str, str], _Active] = field(default_factory=dict)
    unsent: list[Send] = field(default_factory=list)  # resolutions that did not get through

    def plan(self, desired: list[Alert], now: float) -> list[Send]:
        """What to post now for ``desired`` alerts; updates the book as if it was sent."""
        out, self.unsent = self.unsent, []
        wanted = {a.key: a for a in desired}
        out = [s for s in out if s.alert.key not in wanted]  # active again: no resolution
        for key, alert in wanted.items():
            held = self.active.get(key)
            if held is None:
                self.active[key] = _Active(alert, now, now)
                out.append(Send(alert, now, now + 4 * self.resend))
            elif held.alert != alert or now - held.sent >= self.resend:
                held.alert, held.sent = alert, now
                out.append(Send(alert, held.since, now + 4 * self.resend))
        for key in [k for k in self.active if k not in wanted]:
            held = self.active.pop(key)
            out.append(Send(held.alert, held.since, now, resolved=True))
        return out

    def failed(self, sends: list[Send]) -> None:
        """Those ``sends`` did not reach Alertmanager: send them again at the next plan."""
        for s in sends:
            held = self.active.get(s.alert.key)
            if held is not None:
                held.sent = float("-inf")
            elif s.resolved:
                self.unsent.append(s)


def shown(text: str, limit: int = 64) -> str:
    """A client-chosen id (a device's) as it may appear in an annotation: at most ``limit``
    characters, with quotes, backslashes, spaces, control characters, non-ASCII and the
    characters markup gives a meaning to (``<>&`[]``) escaped as ``\\uXXXX``."""
    escaped = "".join(
        c if c.isascii() and c.isprintable() and c not in _MARKUP else f"\\u{ord(c):04x}"
        for c in text[:limit]
    )
    return escaped + ("..." if len(text) > limit else "")


_MARKUP = frozenset(' "\\<>&`[]')


def delivery_loss(node: str, loss: NodeLoss, runbooks: str = RUNBOOK_PLACEHOLDER) -> Alert:
    """PushDeliveryLoss for ``node``: deliveries it owed and that did not happen."""
    samples = ", ".join(
        f"{m.message_id} ({m.kind}, device {shown(m.device)})" for m in loss.samples
    )
    return Alert(
        "PushDeliveryLoss",
        node,
        "critical",
        (
            ("summary", f"{loss.missing} deliveries via {node} never happened"),
            ("description", (
                f"The monitor reconciled deliveries owed by {node}: {loss.expected} expected, "
                f"{loss.unfanned} never written (unfanned), {loss.lost} written and never acked "
                f"after redelivery and the reconnect window (lost)."
            )),
            ("expected", str(loss.expected)),
            ("unfanned", str(loss.unfanned)),
            ("lost", str(loss.lost)),
            ("ratio", f"{loss.ratio:.6f}"),
            ("samples", samples),
            ("runbook_url", runbook(runbooks, "PushDeliveryLoss")),
        ),
    )  # fmt: skip


def node_stalled(node: str, silent_for: float, runbooks: str = RUNBOOK_PLACEHOLDER) -> Alert:
    """PushNodeStalled: the canary through ``node`` stopped arriving while it is registered."""
    return Alert(
        "PushNodeStalled",
        node,
        "critical",
        (
            ("summary", f"Canary messages stopped arriving through {node}"),
            ("description", (
                f"{node} keeps its heartbeat, but the monitor's canary client on it has received "
                f"nothing for {silent_for:.0f} s: its fan-out or bus subscription is stalled."
            )),
            ("runbook_url", runbook(runbooks, "PushNodeStalled")),
        ),
    )  # fmt: skip


def heartbeat_missing(node: str, lapsed_for: float, runbooks: str = RUNBOOK_PLACEHOLDER) -> Alert:
    """PushNodeHeartbeatMissing: ``node`` stopped refreshing its registry entry."""
    return Alert(
        "PushNodeHeartbeatMissing",
        node,
        "warning",
        (
            ("summary", f"pushsvc node {node} stopped its heartbeat"),
            ("description", (
                f"{node} has not refreshed its registry entry for {lapsed_for:.0f} s and did not "
                "deregister: it crashed, was killed, or its event loop is stuck."
            )),
            ("runbook_url", runbook(runbooks, "PushNodeHeartbeatMissing")),
        ),
    )  # fmt: skip
