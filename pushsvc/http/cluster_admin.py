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

Included by :func:`pushsvc.http.internal.create_app` behind the API key. Errors are raised as
HTTP exceptions; the app's handlers turn them into ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

import heapq
import time
from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, HTTPException, Path, Query

from pushsvc.broker.base import Command, History
from pushsvc.core import offsets
from pushsvc.core import session as core
from pushsvc.core.streams import NAME_PATTERN
from pushsvc.errors import FrameError
from pushsvc.http.models import (
    LocalSessionList,
    MessageTrace,
    NodeDraining,
    UserRevoked,
    UserSessionsClosing,
)
from pushsvc.http.openapi import NO_BODY, answers
from pushsvc.node.gateway import Node

#: Sessions one patient can have closed in one request (far above any real count of devices).
MAX_USER_SESSIONS = 10_000


def cluster_admin_routes(node: Node) -> APIRouter:
    """The operator routes served by ``node``."""
    v1 = APIRouter(prefix="/v1", tags=["operator"])

    @v1.get(
        "/local/sessions", summary="This node's sessions with live counters",
        **answers(200, LocalSessionList, 422),
    )  # fmt: skip
    async def local_sessions(
        user: str | None = None, limit: Annotated[int, Query(ge=1, le=10_000)] = 100
    ) -> dict[str, Any]:
        mine = (s for s in node.sessions.values() if user is None or s.user == user)
        oldest = heapq.nsmallest(limit, mine, key=lambda s: s.connected_at)
        return {
            "node": node.id,
            "sessions": [msgspec.to_builtins(node.describe(s)) for s in oldest],
        }

    @v1.delete(
        "/sessions", summary="Close every session of a patient (4010)",
        **answers(202, UserSessionsClosing, 404, *NO_BODY, 503),
    )  # fmt: skip
    async def kick_user(
        user: Annotated[str, Query(min_length=1, max_length=128)],
    ) -> dict[str, Any]:
        holders = {
            s.id: s.node for s in await node.broker.registry.sessions(user, None, MAX_USER_SESSIONS)
        }
        # the registry learns of a session one accounting flush after it opened
        holders.update({s.id: node.id for s in node.sessions.values() if s.user == user})
        if not holders:
            raise HTTPException(404, f"no open session of user {user!r}")
        for session_id, holder in sorted(holders.items()):
            await node.broker.bus.send_command(
                Command(kind="close_session", node=holder, session=session_id, code=4010)
            )
        return {
            "user": user,
            "sessions": [{"session": s, "node": n} for s, n in sorted(holders.items())],
        }

    @v1.post(
        "/users/{user}/revoke", summary="Revoke a patient's tokens (4001)",
        **answers(202, UserRevoked, *NO_BODY, 503),
    )  # fmt: skip
    async def revoke_user(
        user: Annotated[str, Path(pattern=NAME_PATTERN)],
    ) -> dict[str, Any]:
        now = time.time()
        not_before = core.not_before(now)
        ttl = node.settings.token_max_ttl
        await node.broker.registry.revoke(user, not_before, ttl)
        await node.broker.bus.send_command(
            Command(kind="revoke_user", node="*", code=4001, user=user, not_before=not_before)
        )
        return {"user": user, "not_before": not_before, "expires": now + ttl}

    @v1.post(
        "/nodes/{node_id}/drain", summary="Drain a node (1001)",
        **answers(202, NodeDraining, 404, *NO_BODY, 503),
    )  # fmt: skip
    async def drain(node_id: str) -> dict[str, Any]:
        live = {n.id: n for n in await node.broker.registry.nodes()}
        found = live.get(node_id)
        if found is None:
            raise HTTPException(404, f"no live node {node_id[:128]!r}")
        await node.broker.bus.send_command(Command(kind="drain", node=node_id))
        return {"node": node_id, "draining": True, "connections": found.connections}

    @v1.get(
        "/messages/{message_id}/trace", summary="A message's trace context",
        **answers(200, MessageTrace, 404, 503),
    )  # fmt: skip
    async def trace_context(message_id: str) -> dict[str, Any]:
        found = await node.broker.ledger.trail(message_id[:64])
        if found is None:
            raise HTTPException(404, f"no message {message_id[:64]!r} (or its trail expired)")
        parent = await recorded_traceparent(node.broker.history, found.id, found.streams)
        return {"id": found.id, "traceparent": parent, "trace_id": trace_id(parent)}

    return v1


async def recorded_traceparent(history: History, message_id: str, streams: dict[str, str]) -> str:
    """The ``traceparent`` stored with ``message_id`` at its offset in one of ``streams``; ""
    when the publish was not traced or the entry has left the history."""
    for stream, offset in streams.items():
        try:
            before = offsets.preceding(offset)
        except FrameError:
            continue
        for entry in await history.read(stream, before, 1):
            if entry.offset == offset and entry.message.id == message_id:
                return entry.message.traceparent
    return ""


def trace_id(traceparent: str) -> str:
    """The trace id of a W3C ``traceparent`` (``00-<trace id>-<span id>-<flags>``), or ""."""
    parts = traceparent.split("-")
    if len(parts) == 4 and len(parts[1]) == 32 and parts[1].strip("0"):
        return parts[1]
    return ""
