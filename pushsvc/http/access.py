"""Who may call what on the internal API: the one key check, for the routes and the publish lane.

:data:`RULES` maps every ``/v1`` route to the scope it needs (a route missing from it needs
``admin``); :class:`Gate` turns an ``Authorization`` header into the :class:`ApiKey` it names
(401 ``unauthorized`` when none), refuses a key without the scope (403 ``forbidden``) and a key
over its publish rate (429 ``rate_limited`` with ``Retry-After``). Every admitted call with the
``tokens`` or ``admin`` scope writes one audit line::

    {"msg": "audit", "key": "<name>", "action": "<verb>", "target": "<id>", ...}

Keys are named in logs, never shown. :meth:`Gate.dependency` is the FastAPI dependency of every
``/v1`` router; :class:`pushsvc.http.lane.PublishLane` calls :meth:`Gate.admit` itself.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response

from pushsvc.apikeys import ApiKey, KeyRing, Scope
from pushsvc.broker.base import RateLimits
from pushsvc.errors import BrokerError
from pushsvc.http.publishing import ApiError

log = logging.getLogger("pushsvc.audit")

AUDITED = frozenset({Scope.TOKENS, Scope.ADMIN})


@dataclass(frozen=True, slots=True)
class Rule:
    scope: Scope
    action: str  # the audit line's verb


RULES: dict[tuple[str, str], Rule] = {
    ("POST", "/v1/messages"): Rule(Scope.PUBLISH, "publish"),
    ("POST", "/v1/messages/batch"): Rule(Scope.PUBLISH, "publish_batch"),
    ("GET", "/v1/messages/{message_id}"): Rule(Scope.READ, "read_trail"),
    ("GET", "/v1/messages/{message_id}/trace"): Rule(Scope.READ, "read_trace"),
    ("GET", "/v1/nodes"): Rule(Scope.READ, "list_nodes"),
    ("GET", "/v1/sessions"): Rule(Scope.READ, "list_sessions"),
    ("GET", "/v1/local/sessions"): Rule(Scope.READ, "list_local_sessions"),
    ("GET", "/v1/webhooks"): Rule(Scope.READ, "read_webhooks"),
    ("GET", "/v1/stats"): Rule(Scope.READ, "read_stats"),
    ("POST", "/v1/tokens"): Rule(Scope.TOKENS, "mint_token"),
    ("DELETE", "/v1/sessions/{session_id}"): Rule(Scope.ADMIN, "kick_session"),
    ("DELETE", "/v1/sessions"): Rule(Scope.ADMIN, "kick_user"),
    ("POST", "/v1/nodes/{node_id}/drain"): Rule(Scope.ADMIN, "drain_node"),
    ("POST", "/v1/users/{user}/revoke"): Rule(Scope.ADMIN, "revoke_user"),
    ("GET", "/v1/admin/faults"): Rule(Scope.ADMIN, "read_faults"),
    ("POST", "/v1/admin/faults"): Rule(Scope.ADMIN, "inject_faults"),
    ("DELETE", "/v1/admin/faults"): Rule(Scope.ADMIN, "clear_faults"),
}


def rule_for(method: str, route: str) -> Rule:
    """The rule of ``method`` on the route template ``route``; unlisted routes need admin."""
    return RULES.get((method, route)) or Rule(Scope.ADMIN, f"{method} {route}")


class RateLimited(ApiError):
    def __init__(self, key: str, retry_after: float) -> None:
        super().__init__(429, "rate_limited", f"key {key!r} is over its publish rate; slow down")
        self.retry_after = retry_after


def answer(exc: ApiError) -> Response:
    """The error response for ``exc`` (with ``Retry-After`` when rate limited)."""
    response = exc.response()
    if isinstance(exc, RateLimited):
        response.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    return response


class Gate:
    """The key check of one node. ``limits``: the broker's rate limits (None: no limits)."""

    def __init__(self, ring: KeyRing, limits: RateLimits | None = None) -> None:
        self.ring = ring
        self.limits = limits
        for key in ring.keys:
            if key.bare:
                log.warning(
                    "an API key is a bare secret: it has every scope; give it a name and scopes "
                    "(name:secret:scopes)",
                    extra={"key": key.name},
                )

    async def admit(self, header: str | None, scope: Scope, action: str = "") -> ApiKey:
        """The key ``header`` names, if it may use ``scope`` now; else raise :class:`ApiError`
        (401, 403, 429, or 503 when the rate limits cannot be read). A refusal for lack of scope
        is logged with the key's name and ``action``."""
        key = self.ring.authenticate(header)
        if key is None:
            raise ApiError(401, "unauthorized", "missing or wrong API key (Authorization: Bearer)")
        if not key.allows(scope):
            log.warning(
                "access refused",
                extra={"key": key.name, "scope": str(scope), "action": action or str(scope)},
            )
            raise ApiError(403, "forbidden", f"key {key.name!r} lacks the {scope} scope")
        if scope is Scope.PUBLISH and key.rate is not None and self.limits is not None:
            try:
                wait = await self.limits.take(key.name, key.rate, max(1.0, key.rate))
            except BrokerError:
                raise ApiError(
                    503, "broker_unavailable", "the rate limits cannot be checked; retry"
                ) from None
            if wait > 0:
                raise RateLimited(key.name, wait)
        return key

    async def dependency(self, request: Request) -> None:
        """FastAPI dependency: admit the request by its route's rule, audit it, and keep the
        key as ``request.state.api_key``. Async: no trip through a thread pool."""
        route = getattr(request.scope.get("route"), "path", request.url.path)
        rule = rule_for(request.method, route)
        key: ApiKey | None = getattr(request.state, "api_key", None)  # the lane admitted it
        if key is None or not key.allows(rule.scope):
            key = await self.admit(request.headers.get("authorization"), rule.scope, rule.action)
        request.state.api_key = key
        if rule.scope in AUDITED:
            audit(key, rule.action, await _target(request))


def audit(key: ApiKey, action: str, target: str) -> None:
    """One audit line: which key did what to whom."""
    log.info("audit", extra={"key": key.name, "action": action, "target": target[:128]})


async def _target(request: Request) -> str:
    """What a call acts on: its path parameters, else its ``user`` (query or JSON body)."""
    if request.path_params:
        return ",".join(str(v) for v in request.path_params.values())
    if "user" in request.query_params:
        return request.query_params["user"]
    if request.method == "POST":
        try:
            body: Any = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return ""
        if isinstance(body, dict) and isinstance(body.get("user"), str):
            return str(body["user"])
    return ""
