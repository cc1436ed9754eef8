"""Operator routes of the internal API: live sessions of this node, kicking a user, draining a node,
and a message's trace context.

- ``GET /v1/local/sessions?user=&limit=`` — this node's own sessions with their live counters
  (sent, acked, pending, last ack, ping round-trip). ``GET /v1/sessions`` is cluster-wide but only
  knows the answering node's counters; a cluster-wide live view asks every node here (the CLI
  does, each node with its own timeout), so no node ever waits on another.
- ``DELETE /v1/sessions?user=U`` — close every session of a patient with 4010, on whichever nodes
  hold them. 404 when the patient has none.
- ``POST /v1/users/{user}/revoke`` — refuse the patient's tokens issued before now (see
  :func:`pushsvc.core.session.revoked` for the rule at the second's edge): the revocation record
  goes to the broker (it lives ``token_max_ttl``, so nodes started later refuse them too), then
  every node is told to close the patient's sessions holding such a token with 4001.
- ``POST /v1/nodes/{id}/drain`` — ask a node to drain: it stops accepting and closes its sessions
  with 1001 so the clients reconnect elsewhere. 404 when no live node has that id.
- ``GET /v1/messages/{id}/trace`` — the W3C ``traceparent`` the publish recorded for the message
  (read from its history entry) and its trace id; both empty when the publish was not traced.
  404 when the message has no trail.

Each route checks its request and calls one action of
:class:`pushsvc.node.operations.Operations`. Included by :func:`pushsvc.http.internal.create_app`
behind the API key. Errors are raised as HTTP exceptions; the app's handlers turn them into
``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query

from pushsvc.core.streams import NAME_PATTERN
from pushsvc.http.answers import body
from pushsvc.http.openapi import NO_BODY, answers
from pushsvc.node.operations import Operations, S
from pushsvc.records import (
    LocalSessionList,
    MessageTrace,
    NodeDraining,
    UserRevoked,
    UserSessionsClosing,
)


def cluster_admin_routes(ops: Operations[S]) -> APIRouter:
    """The operator routes served by the node whose actions are ``ops``."""
    v1 = APIRouter(prefix="/v1", tags=["operator"])

    @v1.get(
        "/local/sessions", summary="This node's sessions with live counters",
        **answers(200, LocalSessionList, 422),
    )  # fmt: skip
    async def local_sessions(
        user: str | None = None, limit: Annotated[int, Query(ge=1, le=10_000)] = 100
    ) -> dict[str, Any]:
        return body(ops.local_sessions(user, limit))

    @v1.delete(
        "/sessions", summary="Close every session of a patient (4010)",
        **answers(202, UserSessionsClosing, 404, *NO_BODY, 503),
    )  # fmt: skip
    async def kick_user(
        user: Annotated[str, Query(min_length=1, max_length=128)],
    ) -> dict[str, Any]:
        holders = await ops.close_user(user)
        if holders is None:
            raise HTTPException(404, f"no open session of user {user!r}")
        return body(UserSessionsClosing(user=user, sessions=holders))

    @v1.post(
        "/users/{user}/revoke", summary="Revoke a patient's tokens (4001)",
        **answers(202, UserRevoked, *NO_BODY, 503),
    )  # fmt: skip
    async def revoke_user(
        user: Annotated[str, Path(pattern=NAME_PATTERN)],
    ) -> dict[str, Any]:
        return body(await ops.revoke_user(user))

    @v1.post(
        "/nodes/{node_id}/drain", summary="Drain a node (1001)",
        **answers(202, NodeDraining, 404, *NO_BODY, 503),
    )  # fmt: skip
    async def drain(node_id: str) -> dict[str, Any]:
        draining = await ops.drain(node_id)
        if draining is None:
            raise HTTPException(404, f"no live node {node_id[:128]!r}")
        return body(draining)

    @v1.get(
        "/messages/{message_id}/trace", summary="A message's trace context",
        **answers(200, MessageTrace, 404, 503),
    )  # fmt: skip
    async def trace_context(message_id: str) -> dict[str, Any]:
        found = await ops.message_trace(message_id)
        if found is None:
            raise HTTPException(404, f"no message {message_id[:64]!r} (or its trail expired)")
        return body(found)

    return v1
