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

from typing import Annotated, Any

from fastapi import APIRouter
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from pushsvc.http.answers import body
from pushsvc.http.openapi import BODY, NO_BODY, answers
from pushsvc.http.publishing import error_response
from pushsvc.node.operations import Operations, S
from pushsvc.records import FaultsState


class FaultsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    drop_deliveries: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    stop_bus: bool | None = None


def admin_routes(ops: Operations[S]) -> APIRouter:
    """The game-day routes served by the node whose actions are ``ops``."""
    v1 = APIRouter(prefix="/v1/admin", tags=["game days"])

    def refused() -> Response:
        message = "fault injection is off on this node (start it with --enable-fault-injection)"
        return error_response(403, "fault_injection_disabled", message)

    @v1.get("/faults", summary="Faults injected on this node", **answers(200, FaultsState))
    async def faults() -> dict[str, Any]:
        return body(ops.faults())

    @v1.post(
        "/faults", summary="Inject faults on this node (game days)",
        **answers(200, FaultsState, *BODY),
    )  # fmt: skip
    async def inject(request: FaultsRequest) -> dict[str, Any] | Response:
        if not ops.faults_enabled:
            return refused()
        state = ops.inject(request.drop_deliveries, request.stop_bus)
        return body(state)

    @v1.delete(
        "/faults", summary="Clear every fault on this node", **answers(200, FaultsState, *NO_BODY)
    )
    async def clear() -> dict[str, Any] | Response:
        if not ops.faults_enabled:
            return refused()
        return body(ops.clear_faults())

    return v1
