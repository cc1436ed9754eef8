"""Prometheus metrics of a node (docs/observability.md). Names are a contract: extend, don't
rename.

No label carries unbounded values; per-session detail goes through ``GET /v1/sessions``.
The fan-out path increments counters once per message per node, never once per connection.
Every labelled counter starts at 0 for each label value the node records (:data:`KNOWN_LABELS`),
so a dashboard shows 0 rather than "No data" and ``increase()`` sees the first event.
"""

from __future__ import annotations

import gc
import time

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

# no `*_created` series: a third fewer series, and nothing on-call reads them
disable_created_metrics()  # type: ignore[no-untyped-call]  # the library leaves it unannotated
REGISTRY = CollectorRegistry(auto_describe=True)
for _standard in (PROCESS_COLLECTOR, GC_COLLECTOR, PLATFORM_COLLECTOR):
    REGISTRY.register(_standard)  # process_* (CPU, memory, open fds), python_gc_*, python_info

LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
DURATION_BUCKETS = (1, 5, 15, 60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400)

connections = Gauge("pushsvc_connections", "Open client sessions", registry=REGISTRY)
connections_opened = Counter(
    "pushsvc_connections_opened",
    "Client connections by result of the handshake and hello",
    ["result"],
    registry=REGISTRY,
)
connections_closed = Counter(
    "pushsvc_connections_closed", "Closed client connections by close code", ["code"],
    registry=REGISTRY,
)  # fmt: skip
connection_duration = Histogram(
    "pushsvc_connection_duration_seconds", "Lifetime of client sessions",
    buckets=DURATION_BUCKETS, registry=REGISTRY,
)  # fmt: skip
published = Counter(
    "pushsvc_messages_published", "Messages accepted by the publish API", registry=REGISTRY
)
sent = Counter("pushsvc_messages_sent", "Message frames written to sockets", registry=REGISTRY)
acked = Counter("pushsvc_messages_acked", "First acks of a message by a session", registry=REGISTRY)
ack_requested = Counter(
    "pushsvc_messages_ack_requested",
    "Writes of ack:true messages to a session that owe an ack (first write per session; "
    "the denominator of the ack ratio)",
    registry=REGISTRY,
)
redeliveries = Counter(
    "pushsvc_redeliveries", "Messages written again for lack of an ack", registry=REGISTRY
)
replayed = Counter(
    "pushsvc_messages_replayed", "Messages replayed on resume or from the inbox", registry=REGISTRY
)
delivery_latency = Histogram(
    "pushsvc_delivery_latency_seconds", "Publish to the last socket write of a node's fan-out",
    buckets=LATENCY_BUCKETS, registry=REGISTRY,
)  # fmt: skip
ack_latency = Histogram(
    "pushsvc_ack_latency_seconds", "Publish to ack", buckets=LATENCY_BUCKETS, registry=REGISTRY
)
fanout_duration = Histogram(
    "pushsvc_fanout_duration_seconds", "Time to write one message to every local session",
    buckets=LATENCY_BUCKETS, registry=REGISTRY,
)  # fmt: skip
outbox_overflows = Counter(
    "pushsvc_outbox_overflows", "Sessions closed as slow consumers (4008)", registry=REGISTRY
)
broker_up = Gauge("pushsvc_broker_up", "1 while the broker is reachable", registry=REGISTRY)
broker_lag = Gauge(
    "pushsvc_broker_lag_seconds", "Publish to arrival on this node's bus, last message",
    registry=REGISTRY,
)  # fmt: skip
bus_received = Counter(
    "pushsvc_bus_messages_received",
    "Envelopes this node received from the bus, addressed to its sessions or not",
    registry=REGISTRY,
)
catchups = Counter(
    "pushsvc_bus_catchups", "Catch-ups from history after the bus lost envelopes", registry=REGISTRY
)
catchup_messages = Counter(
    "pushsvc_bus_catchup_messages", "History entries re-read by catch-ups", registry=REGISTRY
)
history_undecodable = Counter(
    "pushsvc_history_undecodable",
    "History entries that did not decode and were skipped by a read",
    registry=REGISTRY,
)
frames_rejected = Counter(
    "pushsvc_client_frames_rejected", "Client frames refused, by reason", ["reason"],
    registry=REGISTRY,
)  # fmt: skip
http_errors = Counter(
    "pushsvc_http_errors", "Internal API error answers by status", ["status"], registry=REGISTRY
)
gc_pause = Histogram(
    "pushsvc_gc_pause_seconds", "Garbage collector pauses", ["generation"],
    buckets=LATENCY_BUCKETS, registry=REGISTRY,
)  # fmt: skip
gc_pause_max = Gauge(
    "pushsvc_gc_pause_max_seconds", "Longest garbage collector pause since start",
    registry=REGISTRY,
)  # fmt: skip
info = Gauge("pushsvc_node_info", "Node identity", ["node", "version"], registry=REGISTRY)

# close codes a client may choose are many (3000-4999): anything not ours or standard is "other"
_CLOSE_CODES = {
    code: str(code) for code in (*range(1000, 1016), 4001, 4002, 4003, 4004, 4008, 4009, 4010, 4011)
}


# the label values the node records, each series exposed at 0 from the start
FRAME_REJECTIONS = (
    "frame_too_large", "rate_limited", "binary_frame", "fragmented", "malformed_json",
    "not_an_object", "unknown_frame_type", "invalid_frame", "invalid_offset", "duplicate_hello",
    "hello_expected", "protocol_error", "bad_resume", "invalid_device", "nested_too_deep",
    "invalid_subscription", "push_unavailable",
)  # fmt: skip
HTTP_ERROR_STATUSES = ("400", "401", "403", "404", "405", "409", "413", "415", "422", "429", "503")
CONNECTION_RESULTS = (
    "ok", "unauthorized", "protocol_error", "refused", "hello_timeout", "abandoned",
)  # fmt: skip
CLOSE_CODES = (
    "1000", "1001", "1006", "1011", "4001", "4002", "4003", "4004", "4008", "4009", "4010", "4011",
    "other",
)  # fmt: skip
KNOWN_LABELS: dict[str, tuple[Counter, tuple[str, ...]]] = {
    "pushsvc_client_frames_rejected_total": (frames_rejected, FRAME_REJECTIONS),
    "pushsvc_http_errors_total": (http_errors, HTTP_ERROR_STATUSES),
    "pushsvc_connections_opened_total": (connections_opened, CONNECTION_RESULTS),
    "pushsvc_connections_closed_total": (connections_closed, CLOSE_CODES),
}
for _counter, _values in KNOWN_LABELS.values():
    for _value in _values:
        _counter.labels(_value)


def close_code(code: int) -> str:
    """The ``code`` label of :data:`connections_closed` for a close code (bounded)."""
    return _CLOSE_CODES.get(code, "other")


_gc_started = 0.0
_gc_max = 0.0


def _gc_callback(phase: str, details: dict[str, int]) -> None:
    global _gc_started, _gc_max
    if phase == "start":
        _gc_started = time.perf_counter()
        return
    pause = time.perf_counter() - _gc_started
    gc_pause.labels(str(details.get("generation", 0))).observe(pause)
    if pause > _gc_max:
        _gc_max = pause
        gc_pause_max.set(pause)


def watch_gc() -> None:
    """Start timing garbage collector pauses (idempotent)."""
    if _gc_callback not in gc.callbacks:
        gc.callbacks.append(_gc_callback)


class _Noop:
    """Stands in for a metric when recording is switched off (``metrics = false``)."""

    def labels(self, *_: object, **__: object) -> _Noop:
        return self

    def inc(self, *_: object) -> None:
        return None

    def observe(self, *_: object) -> None:
        return None

    def set(self, *_: object) -> None:
        return None


HOT_PATH = (
    "connections", "connections_opened", "connections_closed", "connection_duration", "published",
    "sent", "acked", "ack_requested", "redeliveries", "replayed", "delivery_latency",
    "ack_latency", "fanout_duration", "outbox_overflows", "broker_lag",
)  # fmt: skip


def disable_recording() -> None:
    """Make every per-message and per-connection metric a no-op (GC pauses are still timed).

    Exists to measure what recording costs (bench/fanout.py with ``PUSHSVC_METRICS=false``);
    a production node always records.
    """
    module = globals()
    for name in HOT_PATH:
        module[name] = _Noop()


_included: list[CollectorRegistry] = []


def include(registry: CollectorRegistry) -> None:
    """Also expose ``registry`` on this process's ``/metrics`` (the embedded monitor's)."""
    if registry not in _included:
        _included.append(registry)


def exposition() -> bytes:
    """The text format of every metric this process exposes."""
    return b"".join(generate_latest(r) for r in (REGISTRY, *_included))


# reaching closed pages (docs/escalation.md)
push_sent = Counter(
    "pushsvc_push_sent",
    "Web Push requests by result: sent (201), gone (404/410: subscription deleted), retry"
    " (429, 5xx, network), failed (any other answer)",
    ["result"],
    registry=REGISTRY,
)
escalations = Counter(
    "pushsvc_escalations",
    "Escalation timers that fired, by what they found: acked, unacked, expired, lost, dropped",
    ["outcome"],
    registry=REGISTRY,
)
webhook_deliveries = Counter(
    "pushsvc_webhook_deliveries",
    "Webhook delivery attempts by result: delivered (2xx), retry, gave_up",
    ["result"],
    registry=REGISTRY,
)
webhook_queue_depth = Gauge(
    "pushsvc_webhook_queue_depth", "Webhook deliveries owed (cluster-wide)", registry=REGISTRY
)
