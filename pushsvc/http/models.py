"""Request and response bodies of the internal API, as pydantic models.

Requests are validated with them; responses are described by them in the OpenAPI document
(:mod:`pushsvc.http.openapi`), and ``tests/test_openapi.py`` checks real answers against it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import annotated_types
import msgspec
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from pushsvc.auth import TOKEN_TTL_CEILING
from pushsvc.broker.base import PushSpec
from pushsvc.core.streams import NAME_PATTERN
from pushsvc.http.publishing import outgoing
from pushsvc.node.publish import Outgoing

_encode = msgspec.json.Encoder().encode
EVENT_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
PUSH_TITLE = 120  # characters: a notification shows little more
PUSH_BODY = 1000
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
Event = Annotated[str, StringConstraints(pattern=EVENT_PATTERN)]


def _integral(value: Any) -> Any:
    """``3600.0`` as ``3600``: JSON (and OpenAPI) call it an integer."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


Ttl = Annotated[int, annotated_types.Interval(ge=1, le=30 * 86_400), BeforeValidator(_integral)]
#: A client token's lifetime: at most 12 h (``token_max_ttl`` may lower it, never raise it).
TokenTtl = Annotated[
    int, annotated_types.Interval(ge=1, le=TOKEN_TTL_CEILING), BeforeValidator(_integral)
]


class _Strict(BaseModel):
    """No unknown fields, and no coercion: ``"5"`` is not a ttl, ``0`` not a boolean."""

    model_config = ConfigDict(extra="forbid", strict=True)


def _exactly_one_target(schema: dict[str, Any]) -> None:
    """``to`` names exactly one of ``users``, ``topics`` or ``all``: the others left out or null."""
    schema["oneOf"] = [
        {"required": ["users"], "properties": {"users": {"type": "array"}}},
        {"required": ["topics"], "properties": {"topics": {"type": "array"}}},
        {"required": ["all"], "properties": {"all": {"const": True}}},
    ]


class Target(_Strict):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_exactly_one_target)

    users: Annotated[list[Name], Field(min_length=1, max_length=1000)] | None = None
    topics: Annotated[list[Name], Field(min_length=1, max_length=100)] | None = None
    all: Literal[True] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Target:
        given = [k for k in ("users", "topics", "all") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError('"to" needs exactly one of "users", "topics" or "all": true')
        return self


class PushRequest(_Strict):
    """Escalate to the user's browsers (Web Push) when no device acked ``after`` s after
    publish."""

    after: Ttl  # past the message's ttl: 1 s before it expires
    title: Annotated[str, StringConstraints(min_length=1, max_length=PUSH_TITLE)]
    body: Annotated[str, StringConstraints(max_length=PUSH_BODY)] = ""
    urgency: Literal["normal", "high"] = "normal"


#: The rules of ``push`` that JSON Schema can state, so that a schema-valid request is accepted:
#: a message that escalates goes to users and asks for acks.
_PUSH_RULES: dict[str, Any] = {
    "if": {"required": ["push"], "properties": {"push": {"type": "object"}}},
    "then": {
        "properties": {
            "to": {"required": ["users"], "properties": {"users": {"type": "array"}}},
            "ack": {"enum": [True, None]},
        }
    },
}


class PublishRequest(_Strict):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_PUSH_RULES)

    to: Target
    event: Event
    data: Any = None
    ttl: Ttl | None = None
    ack: bool | None = None
    idempotency_key: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None
    push: PushRequest | None = None

    @model_validator(mode="after")
    def _push_escalates(self) -> PublishRequest:
        if self.push is not None:
            if self.to.users is None:
                raise ValueError('"push" needs "to": {"users": [...]}')
            if self.ack is False:
                raise ValueError('"push" needs "ack": true (it escalates what no device acked)')
        return self

    def outgoing(self, default_ttl: int, max_data: int) -> Outgoing:
        """The validated message. Raises :class:`DataTooLarge` when ``data`` encodes larger
        than ``max_data``. (msgspec, unlike orjson, encodes integers of any size, as JSON
        allows.)"""
        data = _encode(self.data)
        if len(data) > max_data:
            raise DataTooLarge(f"data is {len(data)} bytes encoded, the limit is {max_data}")
        to = self.to
        push = None
        if self.push is not None:
            push = PushSpec(**self.push.model_dump())
        return outgoing(to.users, to.topics, self.event, data, self.ttl, self.ack,
                        self.idempotency_key, default_ttl, push)  # fmt: skip


class DataTooLarge(ValueError):
    pass


class BatchRequest(_Strict):
    messages: Annotated[list[PublishRequest], Field(min_length=1, max_length=1000)]


class TokenRequest(_Strict):
    user: Name
    topics: Annotated[list[Name], Field(max_length=64)] = []
    ttl: TokenTtl | None = None


# -- responses ---------------------------------------------------------------------------------


class ErrorLocation(BaseModel):
    loc: list[str] = Field(description="where in the request: body fields or a query parameter")
    msg: str


class ErrorDetail(BaseModel):
    code: str = Field(description="a stable slug, such as not_found or invalid_body")
    message: str = Field(description="for humans")
    retryable: bool = Field(
        False, description="true: the outcome is unknown; retry with the same idempotency_key"
    )
    details: list[ErrorLocation] = Field([], description="422 only: up to 20 problems")


class ItemError(BaseModel):
    error: ErrorDetail


class PublishResult(BaseModel):
    """Published (or a duplicate of an earlier publish with the same key)."""

    id: str = Field(description="the message id: 32 hex characters")
    streams: dict[str, str] = Field(description="the message's offset in each stream it went to")
    online_sessions: int = Field(description="sessions on this node reading one of the streams")
    duplicate: bool = Field(description="true: this repeats an earlier publish with the same key")


class ErrorAnswer(BaseModel):
    """Every error answer of the internal API."""

    error: ErrorDetail
    results: list[PublishResult | ItemError] = Field(
        [], description="a failed batch only: one result or error per message, in order"
    )


class BatchResult(BaseModel):
    """Every message published, one result each, in order."""

    results: list[PublishResult]


class DeviceDelivery(BaseModel):
    user: str
    device: str
    session: str
    node: str
    sent_at: float | None
    acked_at: float | None
    attempts: int


class MessageTrail(BaseModel):
    """The message and its delivery to each device."""

    id: str
    event: str
    published_at: float
    expires_at: float
    ack: bool
    streams: dict[str, str]
    state: Literal["pending", "delivered", "partially_acked", "acked", "expired", "lost"]
    devices: list[DeviceDelivery]
    sent_by_node: dict[str, int] = Field(description="writes of ack:false messages, by node")


class MessageTrace(BaseModel):
    """The trace context the publish recorded."""

    id: str
    traceparent: str = Field(description="W3C traceparent recorded by the publish, or empty")
    trace_id: str = Field(description="its trace id, or empty")


class TokenAnswer(BaseModel):
    """A client token for the WebSocket hello."""

    token: str
    user: str
    topics: list[str]
    expires_in: int = Field(description="seconds")


class NodeDescription(BaseModel):
    id: str
    client_addr: str
    internal_addr: str
    pid: int
    version: str
    started: float
    heartbeat: float
    state: Literal["up", "draining"]
    connections: int
    users: int
    broker_lag: float


class NodeList(BaseModel):
    """The live nodes of the cluster."""

    nodes: list[NodeDescription]


class SessionDescription(BaseModel):
    id: str
    node: str
    user: str
    device: str
    remote: str
    connected_at: float
    topics: list[str]
    sent: int
    acked: int
    pending: int
    outbox_bytes: int
    last_ack: float | None
    rtt: float | None


class SessionList(BaseModel):
    """Open sessions, oldest first."""

    sessions: list[SessionDescription]


class LocalSessionList(BaseModel):
    """This node's open sessions with live counters, oldest first."""

    node: str
    sessions: list[SessionDescription]


class SessionClosing(BaseModel):
    """The session's node was told to close it with 4010."""

    session: str
    node: str
    closing: Literal[True]


class HeldSession(BaseModel):
    session: str
    node: str


class UserSessionsClosing(BaseModel):
    """Each session's node was told to close it with 4010."""

    user: str
    sessions: list[HeldSession]


class UserRevoked(BaseModel):
    """The user's tokens issued (``iat``) before ``not_before`` are refused until
    ``expires``; every node was told to close the sessions they hold with 4001."""

    user: str
    not_before: int
    expires: float


class NodeDraining(BaseModel):
    """The node was told to drain."""

    node: str
    draining: Literal[True]
    connections: int


class InjectedFaults(BaseModel):
    drop_deliveries: float
    stop_bus: bool


class FaultsState(BaseModel):
    """What is injected on this node now."""

    node: str
    enabled: bool
    faults: InjectedFaults


class WebhookFailureAnswer(BaseModel):
    """The last failed delivery to an endpoint."""

    at: float
    event_id: str
    error: str
    attempts: int
    gave_up: bool = False


class WebhookEndpoint(BaseModel):
    url: str
    configured: bool
    last_failure: WebhookFailureAnswer | None


class WebhookStatus(BaseModel):
    """The webhook deliveries still owed, the escalations not finished, and per endpoint its last
    failure."""

    queue: int
    escalations: int
    endpoints: list[WebhookEndpoint]
