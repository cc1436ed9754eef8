"""``GET /v1/webhooks``: the webhook queue and each endpoint's last failure (the operator's view,
``pushsvc webhooks``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
from fastapi import APIRouter

from pushsvc.errors import BrokerError
from pushsvc.http.openapi import answers
from pushsvc.http.publishing import UNAVAILABLE, ApiError
from pushsvc.records import WebhookStatus

if TYPE_CHECKING:
    from pushsvc.node.gateway import Node


def webhook_routes(node: Node) -> APIRouter:
    v1 = APIRouter(prefix="/v1", tags=["webhooks"])

    @v1.get(
        "/webhooks",
        summary="The webhook queue and the last failure per endpoint",
        **answers(200, WebhookStatus, 503),
    )
    async def webhooks() -> dict[str, Any]:
        broker = node.broker
        try:
            depth = await broker.webhooks.depth()
            failures = await broker.webhooks.failures()
            escalations = await broker.escalations.pending()
        except BrokerError as exc:
            raise ApiError(503, exc.slug, UNAVAILABLE + "; retry later") from None
        urls = list(dict.fromkeys([*node.settings.webhook_urls, *failures]))
        return {
            "queue": depth,
            "escalations": escalations,
            "endpoints": [
                {
                    "url": url,
                    "configured": url in node.settings.webhook_urls,
                    "last_failure": msgspec.to_builtins(failures[url]) if url in failures else None,
                }
                for url in urls
            ],
        }

    return v1
