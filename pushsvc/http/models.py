"""Response bodies of the internal API, as pydantic models.

They describe the answers in the OpenAPI document (:mod:`pushsvc.http.openapi`), and
``tests/test_openapi.py`` checks real answers against it. (Request bodies are the msgspec schemas
of :mod:`pushsvc.http.bodies`.)
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

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
