"""The monitor's own Prometheus metrics (``pushsvc_monitor_*``, docs/observability.md).

Names are a contract: the delivery dashboard and the rules in ``alerts/`` read them.
``node`` is the node a count or a canary is about; every per-node series starts at 0 the first
time the monitor sees the node, so ``increase()`` sees the first event. The other labelled
counters start at 0 for every value they can take (checks, jobs, alert names and states).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from monitor.reconcile import FANOUT, FINAL, LOSS, Increments

REGISTRY = CollectorRegistry(auto_describe=True)

CANARY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

expected = Counter(
    "pushsvc_monitor_expected_deliveries", "Deliveries expected (first per message and device)",
    ["node"], registry=REGISTRY,
)  # fmt: skip
sent = Counter(
    "pushsvc_monitor_sent_deliveries", "Expected deliveries written (first per message and device)",
    ["node"], registry=REGISTRY,
)  # fmt: skip
acked = Counter(
    "pushsvc_monitor_acked_deliveries", "Expected deliveries acked (first per message and device)",
    ["node"], registry=REGISTRY,
)  # fmt: skip
lost = Counter(
    "pushsvc_monitor_lost_deliveries",
    "Deliveries written and never acked after redelivery and the reconnect window",
    ["node"], registry=REGISTRY,
)  # fmt: skip
unfanned = Counter(
    "pushsvc_monitor_unfanned_deliveries", "Deliveries a node expected and never wrote",
    ["node"], registry=REGISTRY,
)  # fmt: skip
canary_latency = Histogram(
    "pushsvc_monitor_canary_latency_seconds", "Canary publish to arrival through a node",
    ["node"], buckets=CANARY_BUCKETS, registry=REGISTRY,
)  # fmt: skip
canary_up = Gauge(
    "pushsvc_monitor_canary_up", "1 while the canary through a node arrives", ["node"],
    registry=REGISTRY,
)  # fmt: skip
canary_lost = Counter(
    "pushsvc_monitor_canary_lost", "Canaries published through a node that never arrived",
    ["node"], registry=REGISTRY,
)  # fmt: skip
active = Gauge(
    "pushsvc_monitor_active", "1 while this monitor holds the lease (the one that reconciles, "
    "runs canaries and sends alerts)", registry=REGISTRY,
)  # fmt: skip
buckets_checked = Counter(
    "pushsvc_monitor_bucket_checks", "Bucket checks done, by check", ["check"], registry=REGISTRY
)
last_reconcile = Gauge(
    "pushsvc_monitor_last_reconcile_timestamp_seconds", "When the last reconciliation finished",
    registry=REGISTRY,
)  # fmt: skip
alerts_sent = Counter(
    "pushsvc_monitor_alerts_sent", "Alerts posted to Alertmanager, by alert and state",
    ["alertname", "state"], registry=REGISTRY,
)  # fmt: skip
errors = Counter(
    "pushsvc_monitor_errors", "Failed jobs, by job (redis, alertmanager)", ["job"],
    registry=REGISTRY,
)  # fmt: skip

# every other label value, each series exposed at 0 from the start
CHECKS = tuple(str(check) for check in (FANOUT, LOSS, FINAL))
JOBS = ("redis", "alertmanager")
ALERTS = ("PushDeliveryLoss", "PushNodeStalled", "PushNodeHeartbeatMissing")
ALERT_STATES = ("firing", "resolved")
for _check in CHECKS:
    buckets_checked.labels(_check)
for _job in JOBS:
    errors.labels(_job)
for _alert in ALERTS:
    for _state in ALERT_STATES:
        alerts_sent.labels(_alert, _state)

_BY_NAME = {"expected": expected, "sent": sent, "acked": acked, "unfanned": unfanned, "lost": lost}
_known: set[str] = set()


def node_seen(node: str) -> None:
    """Start every per-node series of ``node`` at 0 (idempotent)."""
    if node in _known or not node:
        return
    _known.add(node)
    for counter in (*_BY_NAME.values(), canary_lost):
        counter.labels(node)


def add(increments: Increments) -> None:
    for node, counts in increments.by_node.items():
        node_seen(node)
        for name, value in counts.items():
            _BY_NAME[name].labels(node).inc(value)
