"""Traces of a message's way through the cluster (docs/observability.md), with OpenTelemetry.

One trace per published message::

    POST /v1/messages          SERVER    node that took the request (continues a caller's
     └ send <stream>           PRODUCER  traceparent header when there is one)
        ├ process <stream>     CONSUMER  one per node that received the envelope (not per session),
        │  └ ack <stream>      INTERNAL  linked to the producer; one short span per first ack
        └ process <stream>     CONSUMER  of a session on that node
           └ ack <stream>

The producer's context travels in :attr:`pushsvc.types.Message.traceparent` (W3C ``traceparent``)
inside the bus envelope and the stream history, so every node joins the same trace.

Span names carry the *destination* of the message, not the patient: ``user:<id>`` is named
``user:{id}`` (low-cardinality names, as the OpenTelemetry messaging conventions ask); the exact
streams are in the attributes. A message to several topics is ``send multiple``.

Off by default. :func:`configure` turns tracing on only when the standard variables ask for an
exporter: ``OTEL_TRACES_EXPORTER`` (``console``, ``otlp``, ``none``; a comma list) or, when that is
unset, ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (meaning
``otlp``). ``OTEL_SDK_DISABLED=true`` wins. Sampling (``OTEL_TRACES_SAMPLER``), batching
(``OTEL_BSP_*``) and the resource (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``) are read
by the SDK itself. The OTLP exporter is an optional package
(``opentelemetry-exporter-otlp-proto-http`` or ``-grpc``); without it ``otlp`` logs a warning and
exports nothing.

These are the only environment variables read outside :mod:`pushsvc.settings`: they belong to
the SDK, which reads them too, and mean the same in every OpenTelemetry process.

Cost when off: the pumps test :data:`tracer` (a module global) once per message, nothing else.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections import OrderedDict
from collections.abc import Collection, Iterable, Mapping
from typing import TYPE_CHECKING, Final, cast

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from pushsvc import __version__

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer
    from opentelemetry.util.types import AttributeValue
    from starlette.types import ASGIApp, Receive, Scope, Send
    from starlette.types import Message as AsgiMessage

    from pushsvc.types import Message

log = logging.getLogger(__name__)

INSTRUMENTATION = "pushsvc"
SYSTEM = "pushsvc"
REMEMBERED_MAX = 50_000  # (node, message) contexts kept for the spans of acks that come later

tracer: Tracer | None = None
"""The tracer while tracing is on, else None: the one thing the hot path looks at."""

_provider: TracerProvider | None = None
_propagator: Final = TraceContextTextMapPropagator()
# (node id, message id) -> (context to parent the ack spans on, destination); ack:true only
_delivered: OrderedDict[tuple[str, str], tuple[SpanContext, str]] = OrderedDict()


# -- set-up ---------------------------------------------------------------------------------


def configure(node_id: str, environ: Mapping[str, str] | None = None) -> bool:
    """Turn tracing on if the ``OTEL_*`` variables ask for it; return whether it is on.

    Idempotent: once on (or after :func:`install`), later calls change nothing. ``environ``
    defaults to the process environment."""
    if tracer is not None:
        return True
    env = os.environ if environ is None else environ
    exporters = _exporters(env)
    if not exporters:
        return False
    from opentelemetry.sdk.resources import Resource  # noqa: PLC0415 - only when tracing is on
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415

    resource = Resource.create({"service.version": __version__, "service.instance.id": node_id})
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "pushsvc"}))
    provider = TracerProvider(resource=resource)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    install(provider)
    log.info(
        "tracing on",
        extra={"exporters": [type(e).__name__ for e in exporters], "node": node_id},
    )
    return True


def install(provider: TracerProvider) -> None:
    """Trace with ``provider`` from now on (tests, or a process that built its own)."""
    global tracer, _provider
    _provider = provider
    tracer = provider.get_tracer(INSTRUMENTATION, __version__)


def uninstall() -> None:
    """Turn tracing off again (tests); the provider is left to its owner."""
    global tracer, _provider
    tracer = None
    _provider = None
    _delivered.clear()


def flush(timeout_ms: int = 5000) -> None:
    """Export the spans still buffered (call before the process ends; a no-op when off)."""
    if _provider is not None:
        _provider.force_flush(timeout_ms)


def _exporters(env: Mapping[str, str]) -> list[SpanExporter]:
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not names and (
        env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    ):
        names = "otlp"
    out: list[SpanExporter] = []
    for name in (n.strip() for n in names.split(",")):
        if name in ("", "none"):
            continue
        if name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter  # noqa: PLC0415

            out.append(ConsoleSpanExporter(out=sys.stdout))
        elif name == "otlp":
            exporter = _otlp(env)
            if exporter is not None:
                out.append(exporter)
        else:
            log.warning("unknown OTEL_TRACES_EXPORTER value ignored", extra={"exporter": name})
    return out


def _otlp(env: Mapping[str, str]) -> SpanExporter | None:
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    module = "grpc" if protocol == "grpc" else "http"
    try:
        found = importlib.import_module(
            f"opentelemetry.exporter.otlp.proto.{module}.trace_exporter"
        )
    except ImportError:
        log.warning(
            "OTLP trace export asked for but its package is not installed; no traces exported",
            extra={"install": f"pip install opentelemetry-exporter-otlp-proto-{module}"},
        )
        return None
    return cast("SpanExporter", found.OTLPSpanExporter())


# -- names and contexts ---------------------------------------------------------------------


def destination(streams: Iterable[str]) -> str:
    """The low-cardinality destination of a message: ``user:{id}``, ``topic:<name>``, ``all``,
    or ``multiple`` when its streams have different ones."""
    found = {"user:{id}" if s.startswith("user:") else s for s in streams}
    return found.pop() if len(found) == 1 else "multiple"


def traceparent(span_context: SpanContext) -> str:
    """W3C ``traceparent`` of ``span_context`` ("" when it is not valid)."""
    if not span_context.is_valid:
        return ""
    return (
        f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-"
        f"{int(span_context.trace_flags):02x}"
    )


def parse_traceparent(value: str) -> SpanContext | None:
    """The remote span context in a W3C ``traceparent``; None when empty or malformed."""
    if not value:
        return None
    found = trace.get_current_span(_propagator.extract({"traceparent": value})).get_span_context()
    return found if found.is_valid else None


def _message_attributes(
    message_id: str, streams: Collection[str], node_id: str
) -> dict[str, AttributeValue]:
    return {
        "messaging.system": SYSTEM,
        "messaging.destination.name": next(iter(streams)) if len(streams) == 1 else "multiple",
        "messaging.message.id": message_id,
        "pushsvc.streams": list(streams),
        "pushsvc.node": node_id,
    }


# -- publish: send spans --------------------------------------------------------------------


class Sends:
    """The ``send`` spans of one publish request. :meth:`start` one per message before it goes
    to the broker (its return value is the message's ``traceparent``); then :meth:`end` after
    the broker took them, or :meth:`fail` when it did not."""

    __slots__ = ("_node", "_spans")

    def __init__(self, node_id: str) -> None:
        self._node = node_id
        self._spans: list[Span] = []

    def start(self, message_id: str, event: str, streams: Collection[str]) -> str:
        assert tracer is not None
        attributes = _message_attributes(message_id, streams, self._node)
        attributes["messaging.operation.type"] = "send"
        attributes["pushsvc.event"] = event
        span = tracer.start_span(
            f"send {destination(streams)}", kind=SpanKind.PRODUCER, attributes=attributes
        )
        self._spans.append(span)
        return traceparent(span.get_span_context())

    def end(self) -> None:
        for span in self._spans:
            span.end()
        self._spans.clear()

    def fail(self, exc: BaseException) -> None:
        for span in self._spans:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        self.end()


class _NoSends(Sends):
    """What :func:`sends` returns while tracing is off: does nothing, costs a call."""

    def start(self, message_id: str, event: str, streams: Collection[str]) -> str:
        return ""

    def end(self) -> None:
        return

    def fail(self, exc: BaseException) -> None:
        return


_NO_SENDS: Final = _NoSends("")


def sends(node_id: str) -> Sends:
    """The ``send`` spans of one publish request (a no-op object when tracing is off)."""
    return _NO_SENDS if tracer is None else Sends(node_id)


# -- fan-out: process spans -----------------------------------------------------------------


def process(message: Message, streams: Collection[str], node_id: str) -> Span:
    """Start the ``process`` span of ``message`` on this node, a child of (and linked to) its
    ``send`` span. Call only while :data:`tracer` is set; then :func:`processed`."""
    assert tracer is not None
    producer = parse_traceparent(message.traceparent)
    parent = None
    links: list[Link] = []
    if producer is not None:
        parent = trace.set_span_in_context(trace.NonRecordingSpan(producer))
        links.append(Link(producer))
    attributes = _message_attributes(message.id, streams, node_id)
    attributes["messaging.operation.type"] = "process"
    attributes["pushsvc.event"] = message.event
    return tracer.start_span(
        f"process {destination(streams)}",
        context=parent,
        kind=SpanKind.CONSUMER,
        links=links,
        attributes=attributes,
    )


def processed(
    span: Span, message: Message, streams: Collection[str], node_id: str, written: int
) -> None:
    """End a :func:`process` span: ``written`` sessions got the message on this node."""
    span.set_attribute("pushsvc.sessions_written", written)
    span.end()
    if written and message.ack:
        _remember((node_id, message.id), (span.get_span_context(), destination(streams)))


def replayed(node_id: str, messages: Iterable[tuple[str, Message]]) -> None:
    """Remember the ``send`` context of ack:true messages replayed by ``node_id`` (``(stream,
    message)`` pairs), so their acks join the message's trace too."""
    for stream, message in messages:
        if message.ack and (node_id, message.id) not in _delivered:
            producer = parse_traceparent(message.traceparent)
            if producer is not None:
                _remember((node_id, message.id), (producer, destination((stream,))))


def _remember(key: tuple[str, str], value: tuple[SpanContext, str]) -> None:
    _delivered[key] = value
    if len(_delivered) > REMEMBERED_MAX:
        _delivered.popitem(last=False)


# -- acks -----------------------------------------------------------------------------------


def acked(node_id: str, session_id: str, message_ids: Iterable[str], now_ns: int) -> None:
    """Record one short ``ack`` span per first ack, under the node's ``process`` span of the
    message (acks of messages this node did not trace are skipped). ``now_ns``: unix ns."""
    assert tracer is not None
    for message_id in message_ids:
        found = _delivered.get((node_id, message_id))
        if found is None:
            continue
        parent_context, dest = found
        published_ms = int(message_id[:12], 16)  # ids start with the publish time (publish.new_id)
        span = tracer.start_span(
            f"ack {dest}",
            context=trace.set_span_in_context(trace.NonRecordingSpan(parent_context)),
            kind=SpanKind.INTERNAL,
            start_time=now_ns,
            attributes={
                "messaging.system": SYSTEM,
                "messaging.operation.type": "settle",
                "messaging.message.id": message_id,
                "pushsvc.node": node_id,
                "pushsvc.session": session_id,
                "pushsvc.ack_latency": max(0.0, now_ns / 1e9 - published_ms / 1000),
            },
        )
        span.end(end_time=now_ns)


# -- the publish endpoint's server span -----------------------------------------------------


class ServerSpans:
    """ASGI middleware: a SERVER span around requests to ``routes`` (``(method, path)`` pairs),
    continuing the caller's ``traceparent`` header. Passes everything through while off."""

    def __init__(self, app: ASGIApp, routes: Collection[tuple[str, str]]) -> None:
        self.app = app
        self.routes = frozenset(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            tracer is None
            or scope["type"] != "http"
            or (scope["method"], scope["path"]) not in self.routes
        ):
            await self.app(scope, receive, send)
            return
        carrier = {"traceparent": ""}
        for name, value in scope["headers"]:
            if name in (b"traceparent", b"tracestate"):
                carrier[name.decode()] = value.decode("latin-1")
        parent = _propagator.extract(carrier) if carrier["traceparent"] else None
        method, path = scope["method"], scope["path"]
        span = tracer.start_span(
            f"{method} {path}", context=parent, kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "http.route": path, "url.path": path},
        )  # fmt: skip

        async def traced(message: AsgiMessage) -> None:
            if message["type"] == "http.response.start":
                status = int(message["status"])
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
            await send(message)

        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            await self.app(scope, receive, traced)
        except BaseException as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            otel_context.detach(token)
            span.end()
