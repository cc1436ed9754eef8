"""Game-day routes of the internal API: faults a node injects into itself (docs/runbooks.md).

- ``GET /v1/admin/faults`` — what is injected now, and whether injection is enabled.
- ``POST /v1/admin/faults`` — ``{"drop_deliveries": 0.001}`` and/or ``{"stop_bus": true}``; fields
  left out keep their value. 403 ``fault_injection_disabled`` unless the node was started with
  ``--enable-fault-injection`` (``PUSHSVC_ENABLE_FAULT_INJECTION=true``).
- ``DELETE /v1/admin/faults`` — clear every fault (after ``stop_bus``, the node catches up).

Faults apply to the node that answers the request only. Included by
:func:`pushsvc.http.internal.create_app` behind the API key.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from pushsvc.http.models import FaultsState
from pushsvc.http.openapi import BODY, NO_BODY, answers
from pushsvc.http.publishing import error_response
from pushsvc.node.gateway import Node

log = logging.getLogger(__name__)


class FaultsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    drop_deliveries: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    stop_bus: bool | None = None


def admin_routes(node: Node) -> APIRouter:
    """The game-day routes served by ``node``."""
    v1 = APIRouter(prefix="/v1/admin", tags=["game days"])
    enabled = node.settings.enable_fault_injection

    def state() -> dict[str, Any]:
        return {"node": node.id, "enabled": enabled, "faults": node.faults.describe()}

    def refused() -> Response:
        message = "fault injection is off on this node (start it with --enable-fault-injection)"
        return error_response(403, "fault_injection_disabled", message)

    @v1.get("/faults", summary="Faults injected on this node", **answers(200, FaultsState))
    async def faults() -> dict[str, Any]:
        return state()

    @v1.post(
        "/faults", summary="Inject faults on this node (game days)",
        **answers(200, FaultsState, *BODY),
    )  # fmt: skip
    async def inject(request: FaultsRequest) -> dict[str, Any] | Response:
        if not enabled:
            return refused()
        if request.drop_deliveries is not None:
            node.faults.drop_deliveries = request.drop_deliveries
        if request.stop_bus is not None:
            if node.faults.stop_bus and not request.stop_bus:
                node.faults.stop_bus = False
                node.catchup.restart()
            node.faults.stop_bus = request.stop_bus
        log.warning("faults injected", extra={"node": node.id, **node.faults.describe()})
        return state()

    @v1.delete(
        "/faults", summary="Clear every fault on this node", **answers(200, FaultsState, *NO_BODY)
    )
    async def clear() -> dict[str, Any] | Response:
        if not enabled:
            return refused()
        stopped = node.faults.stop_bus
        node.faults.drop_deliveries = 0.0
        node.faults.stop_bus = False
        if stopped:
            node.catchup.restart()
        log.warning("faults cleared", extra={"node": node.id})
        return state()

    return v1
