"""The gauges read from a node's state at scrape time (docs/observability.md).

They live beside the node rather than in :mod:`pushsvc.telemetry.metrics`, so telemetry knows
nothing of the node; :func:`watch` adds them to that module's registry.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pushsvc.telemetry import metrics

if TYPE_CHECKING:
    from pushsvc.node.gateway import Node


class NodeCollector(Collector):
    """Gauges read from a node's state at scrape time: nothing on the hot path.

    Collected on the event loop (the ``/metrics`` handler is a coroutine), so the node's
    structures are not changing underneath."""

    def __init__(self, node: Node) -> None:
        self._node = node

    def collect(self) -> Iterator[Metric]:
        node = self._node
        acks = node.acks
        yield _gauge(
            "pushsvc_fanout_backlog", "Envelopes received from the bus, not yet fanned out",
            node.fanout.backlog(),
        )  # fmt: skip
        yield _gauge("pushsvc_acks_pending", "Deliveries written and waiting for an ack", len(acks))
        yield _gauge(
            "pushsvc_sessions_pending_acks", "Sessions owing at least one ack",
            sum(1 for session_id in node.sessions if acks.pending(session_id)),
        )  # fmt: skip
        yield _gauge(
            "pushsvc_sessions_over_outbox_cap",
            "Sessions whose outbox is over its cap (closed with 4008 after the grace)",
            len(node.over_cap),
        )  # fmt: skip
        yield _gauge(
            "pushsvc_accounting_backlog",
            "Ledger events and session records waiting to be written to the broker",
            len(node.accounting.events) + len(node.accounting.opened) + len(node.accounting.closed),
        )  # fmt: skip
        dropped = CounterMetricFamily(
            "pushsvc_accounting_dropped",
            "Ledger events dropped, oldest first, while the broker was down too long",
        )
        dropped.add_metric([], node.accounting.dropped)
        yield dropped
        yield _gauge(
            "pushsvc_gc_frozen_objects", "Objects moved to the permanent generation by gc.freeze()",
            gc.get_freeze_count(),
        )  # fmt: skip


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


_watched: NodeCollector | None = None


def watch(node: Node) -> None:
    """Report ``node``'s backlogs at every scrape of :data:`pushsvc.telemetry.metrics.REGISTRY`
    (the latest node watched, one per process)."""
    global _watched
    if _watched is not None:
        metrics.REGISTRY.unregister(_watched)
    _watched = NodeCollector(node)
    metrics.REGISTRY.register(_watched)
