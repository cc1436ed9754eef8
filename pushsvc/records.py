"""The answers of the internal API, one msgspec struct each: the node builds them (or dicts of
the same shape), the CLI decodes them (:mod:`cli.api`) and the OpenAPI document describes them
(:mod:`pushsvc.http.answers` makes their JSON Schema components, named as the classes).

A field with a default may be left out of an answer; every other one is always there. (The
answers only the node reads, a batch result and a token, are in :mod:`pushsvc.http.answers`.)
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from pushsvc.broker.base import NodeInfo, SessionInfo

#: ``true``, always (msgspec has no boolean literals).
AlwaysTrue = Annotated[bool, msgspec.Meta(extra_json_schema={"const": True})]


def _described(text: str) -> msgspec.Meta:
    return msgspec.Meta(description=text)


# -- errors ------------------------------------------------------------------------------------


class ErrorLocation(msgspec.Struct, kw_only=True, frozen=True):
    loc: Annotated[list[str], _described("where in the request: body fields or a query parameter")]
    msg: str


class ErrorDetail(msgspec.Struct, kw_only=True, frozen=True):
    code: Annotated[str, _described("a stable slug, such as not_found or invalid_body")]
    message: Annotated[str, _described("for humans")]
    retryable: Annotated[
        bool, _described("true: the outcome is unknown; retry with the same idempotency_key")
    ] = False
    details: Annotated[list[ErrorLocation], _described("422 only: up to 20 problems")] = []


class ItemError(msgspec.Struct, kw_only=True, frozen=True):
    error: ErrorDetail


# -- publishing --------------------------------------------------------------------------------


class PublishResult(msgspec.Struct, kw_only=True, frozen=True):
    """Published (or a duplicate of an earlier publish with the same key)."""

    id: Annotated[str, _described("the message id: 32 hex characters")]
    streams: Annotated[dict[str, str], _described("the message's offset in each stream it went to")]
    online_sessions: Annotated[int, _described("sessions on this node reading one of the streams")]
    duplicate: Annotated[
        bool, _described("true: this repeats an earlier publish with the same key")
    ]


class ErrorAnswer(msgspec.Struct, kw_only=True, frozen=True):
    """Every error answer of the internal API."""

    error: ErrorDetail
    results: Annotated[
        list[dict[str, Any]],
        _described("a failed batch only: one result or error per message, in order"),
    ] = []  # each a PublishResult or an ItemError (pushsvc.http.answers says so in the schema)


# -- messages ----------------------------------------------------------------------------------


class DeviceDelivery(msgspec.Struct, kw_only=True, frozen=True):
    """A device the message went to: through a session, or only as a Web Push (then
    ``session``, ``node`` and ``sent_at`` are null)."""

    user: str
    device: str
    session: str | None
    node: str | None
    sent_at: float | None
    acked_at: float | None
    attempts: int
    push_sent_at: Annotated[
        float | None,
        _described("when its push service accepted a Web Push escalating the message, or null"),
    ]


class MessageTrail(msgspec.Struct, kw_only=True, frozen=True):
    """The message and its delivery to each device."""

    id: str
    event: str
    published_at: float
    expires_at: float
    ack: bool
    streams: dict[str, str]
    state: Literal["pending", "delivered", "partially_acked", "acked", "expired", "lost"]
    devices: list[DeviceDelivery]
    sent_by_node: Annotated[dict[str, int], _described("writes of ack:false messages, by node")]


class MessageTrace(msgspec.Struct, kw_only=True, frozen=True):
    """The trace context the publish recorded."""

    id: str
    traceparent: Annotated[str, _described("W3C traceparent recorded by the publish, or empty")]
    trace_id: Annotated[str, _described("its trace id, or empty")]


# -- nodes and sessions ------------------------------------------------------------------------


class NodeList(msgspec.Struct, kw_only=True, frozen=True):
    """The live nodes of the cluster."""

    nodes: list[NodeInfo]


class SessionList(msgspec.Struct, kw_only=True, frozen=True):
    """Open sessions, oldest first."""

    sessions: list[SessionInfo]


class LocalSessionList(msgspec.Struct, kw_only=True, frozen=True):
    """This node's open sessions with live counters, oldest first."""

    node: str
    sessions: list[SessionInfo]


class SessionClosing(msgspec.Struct, kw_only=True, frozen=True):
    """The session's node was told to close it with 4010."""

    session: str
    node: str
    closing: AlwaysTrue


class HeldSession(msgspec.Struct, kw_only=True, frozen=True):
    """A session and the node that holds it."""

    session: str
    node: str


class UserSessionsClosing(msgspec.Struct, kw_only=True, frozen=True):
    """Each session's node was told to close it with 4010."""

    user: str
    sessions: list[HeldSession]


class UserRevoked(msgspec.Struct, kw_only=True, frozen=True):
    """The user's tokens issued (``iat``) before ``not_before`` are refused until
    ``expires``; every node was told to close the sessions they hold with 4001."""

    user: str
    not_before: int
    expires: float


class NodeDraining(msgspec.Struct, kw_only=True, frozen=True):
    """The node was told to drain."""

    node: str
    connections: int
    draining: AlwaysTrue


# -- game days and webhooks --------------------------------------------------------------------


class InjectedFaults(msgspec.Struct, kw_only=True, frozen=True):
    drop_deliveries: float
    stop_bus: bool


class FaultsState(msgspec.Struct, kw_only=True, frozen=True):
    """What is injected on this node now."""

    node: str
    enabled: bool
    faults: InjectedFaults


class WebhookFailureAnswer(msgspec.Struct, kw_only=True, frozen=True):
    """The last failed delivery to an endpoint."""

    at: float
    event_id: str
    error: str
    attempts: int
    gave_up: bool = False


class WebhookEndpoint(msgspec.Struct, kw_only=True, frozen=True):
    url: str
    configured: bool
    last_failure: WebhookFailureAnswer | None


class WebhookStatus(msgspec.Struct, kw_only=True, frozen=True):
    """The webhook deliveries still owed, the escalations not finished, and per endpoint its last
    failure."""

    queue: int
    escalations: int
    endpoints: list[WebhookEndpoint]
