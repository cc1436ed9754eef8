"""The records the internal API's operator routes answer with, shared by the node that builds
them (:mod:`pushsvc.node.operations`) and the CLI that reads them (:mod:`cli.api`).

Their OpenAPI descriptions are the pydantic models of :mod:`pushsvc.http.models`;
tests/test_openapi.py keeps each record's fields equal to its model's.
"""

from __future__ import annotations

import msgspec

from pushsvc.broker.base import SessionInfo


class TraceContext(msgspec.Struct, kw_only=True, frozen=True):
    """The W3C ``traceparent`` a publish recorded and its trace id; both empty when untraced."""

    id: str
    traceparent: str = ""
    trace_id: str = ""


class Closing(msgspec.Struct, kw_only=True, frozen=True):
    """A session whose node was told to close it (4010)."""

    session: str
    node: str


class UserClosing(msgspec.Struct, kw_only=True, frozen=True):
    user: str
    sessions: list[Closing]


class Revoked(msgspec.Struct, kw_only=True, frozen=True):
    """The user's tokens issued before ``not_before`` are refused until ``expires``."""

    user: str
    not_before: int
    expires: float


class Draining(msgspec.Struct, kw_only=True, frozen=True):
    node: str
    connections: int = 0
    draining: bool = True


class LocalSessions(msgspec.Struct, kw_only=True, frozen=True):
    """A node's own open sessions with their live counters, oldest first."""

    node: str
    sessions: list[SessionInfo]


class FaultsState(msgspec.Struct, kw_only=True, frozen=True):
    """What is injected on a node now, and whether injection is enabled there."""

    node: str
    enabled: bool
    faults: dict[str, float | bool]
