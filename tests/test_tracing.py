"""Traces: off by default, configured from OTEL_* variables, and one trace per message across nodes.

The cross-node test runs two nodes in this process, on one event loop, each with its own
RedisBroker on one real redis-server: node B only learns about a message through Redis pub/sub,
so the trace can only be joined if the producer's ``traceparent`` really travels in the bus
envelope. The SDK's in-memory exporter collects the spans of both nodes.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from pushsvc.brokers import redis_broker
from pushsvc.http.client_listener import edge_factory
from pushsvc.http.internal import create_app
from pushsvc.node.gateway import Node
from pushsvc.settings import Settings
from pushsvc.telemetry import tracing
from tests.support import API_KEY, TOKEN_SECRET, UNIT, RedisServer, launch_node, start_redis
from tests.wire import Wire


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


OTLP_INSTALLED = _installed("opentelemetry.exporter.otlp.proto.http") or _installed(
    "opentelemetry.exporter.otlp.proto.grpc"
)


# -- configuration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"OTEL_TRACES_EXPORTER": "none"},
        {"OTEL_TRACES_EXPORTER": ""},
        {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "console"},
        {"OTEL_SERVICE_NAME": "pushsvc", "OTEL_TRACES_SAMPLER": "always_on"},  # no exporter
    ],
)
def test_off_unless_an_exporter_is_configured(environ: dict[str, str]) -> None:
    assert tracing.configure("n1", environ) is False
    assert tracing.tracer is None
    assert tracing.sends("n1").start("id", "e", ["user:p1"]) == ""


def test_console_exporter_turns_tracing_on() -> None:
    try:
        assert tracing.configure("n1", {"OTEL_TRACES_EXPORTER": "console"}) is True
        assert tracing.tracer is not None
        assert tracing.configure("n1", {}) is True  # idempotent: stays on
    finally:
        tracing.uninstall()
    assert tracing.tracer is None


@pytest.mark.skipif(OTLP_INSTALLED, reason="an OTLP exporter package is installed")
@pytest.mark.parametrize(
    "environ",
    [
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"},
        {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
    ],
)
def test_otlp_without_its_package_warns_and_stays_off(
    environ: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "pushsvc.telemetry.tracing"):
        assert tracing.configure("n1", environ) is False
    assert tracing.tracer is None
    assert any("OTLP" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("streams", "name"),
    [
        (["user:p1"], "user:{id}"),
        (["user:p1", "user:p2"], "user:{id}"),
        (["topic:clinic-205"], "topic:clinic-205"),
        (["all"], "all"),
        (["topic:a", "topic:b"], "multiple"),
    ],
)
def test_span_names_use_low_cardinality_destinations(streams: list[str], name: str) -> None:
    assert tracing.destination(streams) == name


@pytest.mark.parametrize(
    "value",
    ["", "junk", "00-00000000000000000000000000000000-0000000000000000-01", "00-abc-def-01"],
)
def test_bad_traceparents_are_ignored(value: str) -> None:
    assert tracing.parse_traceparent(value) is None


def test_traceparent_round_trip() -> None:
    value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    found = tracing.parse_traceparent(value)
    assert found is not None
    assert tracing.traceparent(found) == value


# -- two nodes, one trace -----------------------------------------------------------------


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracing.install(provider)
    try:
        yield memory
    finally:
        tracing.uninstall()
        provider.shutdown()


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with start_redis() as server:
        yield server


@pytest.fixture
async def nodes(redis: RedisServer, exporter: InMemorySpanExporter) -> AsyncIterator[list[Node]]:
    started: list[Node] = []
    try:
        for name in ("node-a", "node-b"):
            settings = Settings(
                node_id=name, redis_url=redis.url, port=0, internal_port=0,
                token_secret=TOKEN_SECRET, api_keys=[API_KEY], registry_interval=0.5,
            )  # fmt: skip
            node = Node(settings, redis_broker(settings))
            await node.start(edge_factory(node))
            started.append(node)
        yield started
    finally:
        for node in started:
            await node.close()
            await node.broker.close()


async def _eventually(check: Callable[[], object], timeout: float = 5 * UNIT) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)


def internal_api(node: Node) -> httpx.AsyncClient:
    """The node's internal API, called in this process (no server, same event loop)."""
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(node)), base_url="http://a"
    )


def _by_name(spans: tuple[ReadableSpan, ...], prefix: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name.startswith(prefix)]


@pytest.mark.redis
@pytest.mark.parametrize("upstream", [False, True])
async def test_publish_on_a_delivered_on_b_and_acked_is_one_trace(
    nodes: list[Node], exporter: InMemorySpanExporter, upstream: bool
) -> None:
    node_a, node_b = nodes
    token = node_b.tokens.mint("p1")
    url = f"ws://{node_b.client_addr}/ws"
    phone, tablet = await Wire.open(url, token, "phone"), await Wire.open(url, token, "tablet")
    headers = {"Authorization": f"Bearer {API_KEY}"}
    caller = "4bf92f3577b34da6a3ce929d0e0e4736"
    if upstream:  # a hospital system that traces its own requests
        headers["traceparent"] = f"00-{caller}-00f067aa0ba902b7-01"
    api = internal_api(node_a)
    async with api:
        r = await api.post(
            "/v1/messages", headers=headers,
            json={"to": {"users": ["p1"]}, "event": "queue.called", "data": {"room": 5}},
        )  # fmt: skip
    assert r.status_code == 202, r.text
    message_id = r.json()["id"]
    for wire in (phone, tablet):
        (msg,) = await wire.messages(1)
        assert msg["id"] == message_id and msg["ack"] is True
        await wire.ack(message_id)
    await _eventually(lambda: len(_by_name(exporter.get_finished_spans(), "ack ")) == 2)
    await phone.close()
    await tablet.close()

    spans = exporter.get_finished_spans()
    (server,) = [s for s in spans if s.kind is SpanKind.SERVER]
    (send,) = _by_name(spans, "send ")
    processes = _by_name(spans, "process ")
    acks = _by_name(spans, "ack ")
    assert {s.context.trace_id for s in spans} == {server.context.trace_id}, "one trace"
    if upstream:
        assert f"{server.context.trace_id:032x}" == caller
        assert server.parent is not None and server.parent.is_remote
    else:
        assert server.parent is None
    assert server.name == "POST /v1/messages"
    assert server.attributes is not None and server.attributes["http.response.status_code"] == 202

    assert send.name == "send user:{id}" and send.kind is SpanKind.PRODUCER
    assert send.parent is not None and send.parent.span_id == server.context.span_id
    assert send.attributes is not None
    assert send.attributes["messaging.message.id"] == message_id
    assert send.attributes["messaging.destination.name"] == "user:p1"
    assert send.attributes["pushsvc.node"] == "node-a"

    # one CONSUMER span per node that received it (not per connection), child of and linked to
    # the send span: only node B holds the patient, so only B receives the envelope
    by_node = {s.attributes["pushsvc.node"]: s for s in processes if s.attributes}
    assert len(processes) == 1 and set(by_node) == {"node-b"}
    for span in processes:
        assert span.name == "process user:{id}" and span.kind is SpanKind.CONSUMER
        assert span.parent is not None and span.parent.span_id == send.context.span_id
        assert [link.context.span_id for link in span.links] == [send.context.span_id]
        assert span.attributes is not None and span.attributes["messaging.message.id"] == message_id
    assert by_node["node-b"].attributes is not None
    assert by_node["node-b"].attributes["pushsvc.sessions_written"] == 2

    # acks: short spans on node B, under B's process span, one per device
    for span in acks:
        assert span.parent is not None and span.parent.span_id == by_node["node-b"].context.span_id
        assert span.attributes is not None and span.attributes["pushsvc.node"] == "node-b"
        assert span.attributes["messaging.message.id"] == message_id
        assert 0 <= float(str(span.attributes["pushsvc.ack_latency"])) < 5 * UNIT
    assert len({s.attributes["pushsvc.session"] for s in acks if s.attributes}) == 2

    # the traceparent is stored with the message: in the history every node reads
    (entry,) = await node_a.broker.history.read("user:p1", None, 10)
    assert entry.message.traceparent == tracing.traceparent(send.context)


@pytest.mark.redis
async def test_acks_of_replayed_messages_join_the_trace(
    nodes: list[Node], exporter: InMemorySpanExporter
) -> None:
    """A message published while the patient was offline is replayed on connect; its ack span
    still belongs to the message's trace (under the send span: no live fan-out wrote it)."""
    node_a, node_b = nodes
    api = internal_api(node_a)
    async with api:
        r = await api.post(
            "/v1/messages", headers={"Authorization": f"Bearer {API_KEY}"},
            json={"to": {"users": ["p2"]}, "event": "lab.ready", "data": {}},
        )  # fmt: skip
    assert r.status_code == 202, r.text
    message_id = r.json()["id"]
    wire = await Wire.open(f"ws://{node_b.client_addr}/ws", node_b.tokens.mint("p2"), "phone")
    (msg,) = await wire.messages(1)
    assert msg["id"] == message_id and msg["replay"] is True
    await wire.ack(message_id)
    await _eventually(lambda: _by_name(exporter.get_finished_spans(), "ack "))
    await wire.close()
    spans = exporter.get_finished_spans()
    (send,) = _by_name(spans, "send ")
    (ack,) = _by_name(spans, "ack ")
    assert ack.context.trace_id == send.context.trace_id
    assert ack.parent is not None and ack.parent.span_id == send.context.span_id


@pytest.mark.redis
async def test_tracing_off_leaves_messages_without_traceparent(redis: RedisServer) -> None:
    settings = Settings(
        node_id="plain", redis_url=redis.url, port=0, internal_port=0,
        token_secret=TOKEN_SECRET, api_keys=[API_KEY],
    )  # fmt: skip
    node = Node(settings, redis_broker(settings))
    await node.start(edge_factory(node))
    try:
        assert tracing.tracer is None
        api = internal_api(node)
        async with api:
            r = await api.post(
                "/v1/messages", headers={"Authorization": f"Bearer {API_KEY}"},
                json={"to": {"topics": ["clinic-205"]}, "event": "queue.called", "data": {}},
            )  # fmt: skip
        assert r.status_code == 202, r.text
        (entry,) = await node.broker.history.read("topic:clinic-205", None, 10)
        assert entry.message.traceparent == ""
    finally:
        await node.close()
        await node.broker.close()


# -- a real node process, configured by the environment -----------------------------------


async def test_a_node_process_exports_to_the_console_when_asked() -> None:
    node = launch_node(
        dev=False,
        env={"OTEL_TRACES_EXPORTER": "console", "OTEL_BSP_SCHEDULE_DELAY": "50",
             "OTEL_SERVICE_NAME": "pushsvc-test"},
    )  # fmt: skip
    try:
        token = node.token("p1")
        wire = await Wire.open(node.client_url, token, "phone")
        message_id = node.publish({"to": {"users": ["p1"]}, "event": "e", "data": {}})["id"]
        (msg,) = await wire.messages(1)
        await wire.ack(msg["id"])
        await wire.close()
        deadline = time.monotonic() + 5 * UNIT
        while time.monotonic() < deadline:  # spans are exported in batches, in any order
            log = node.log()
            if '"ack user:{id}"' in log and message_id in log:
                break
            await asyncio.sleep(0.05)
        log = node.log()
        for name in ("POST /v1/messages", "send user:{id}", "process user:{id}", "ack user:{id}"):
            assert f'"name": "{name}"' in log, name
        assert message_id in log and '"service.name": "pushsvc-test"' in log
    finally:
        node.stop()
