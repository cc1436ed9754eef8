"""What the publish endpoints share, whichever way a request came in (the FastAPI routes of
:mod:`pushsvc.http.internal` or :class:`pushsvc.http.lane.PublishLane`): the error answer, the
message built from validated fields, and the call to the publisher with its errors mapped to
HTTP."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.responses import JSONResponse

from pushsvc.core.streams import ALL, topic_stream, user_stream
from pushsvc.errors import BrokerError, BrokerUnavailable, IdempotencyConflict
from pushsvc.node.publish import Outgoing, Publisher, Result
from pushsvc.telemetry import metrics

if TYPE_CHECKING:
    from pushsvc.node.gateway import Node


#: What a caller hears when the broker fails: never the broker's (Redis's) own error text.
UNAVAILABLE = "the broker is unavailable"


class ApiError(Exception):
    """An error answer: ``status`` with ``{"error": {"code", "message"}}``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def error_response(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    metrics.http_errors.labels(str(status)).inc()
    return JSONResponse({"error": {"code": code, "message": message, **extra}}, status_code=status)


def outgoing(
    users: list[str] | None,
    topics: list[str] | None,
    event: str,
    data: bytes,
    ttl: int | None,
    ack: bool | None,
    idempotency_key: str | None,
    default_ttl: int,
) -> Outgoing:
    """The message of a validated request that names exactly one of ``users``, ``topics`` or
    (both None) everyone. ``ack`` defaults to true for users, false otherwise."""
    if users is not None:
        streams = [user_stream(u) for u in dict.fromkeys(users)]
    elif topics is not None:
        streams = [topic_stream(t) for t in dict.fromkeys(topics)]
    else:
        streams = [ALL]
    return Outgoing(
        streams=streams,
        event=event,
        data=data,
        ttl=ttl or default_ttl,
        ack=ack if ack is not None else users is not None,
        idempotency_key=idempotency_key,
    )


class Publishing:
    """Publishes validated messages for the endpoints of ``node``."""

    def __init__(self, node: Node) -> None:
        self.settings = node.settings
        self._publisher = Publisher(node)

    async def run(self, items: list[Outgoing]) -> list[Result]:
        """Publish ``items``; one result each. Raises :class:`ApiError`: 503 while the broker
        is unavailable (retry with the same key), 409 for a key being published right now."""
        try:
            return await self._publisher.publish(items)
        except BrokerUnavailable as exc:
            raise ApiError(503, exc.slug, UNAVAILABLE + "; retry with the same key") from None
        except IdempotencyConflict as exc:
            raise ApiError(409, exc.slug, exc.message) from None
        except BrokerError as exc:
            raise ApiError(503, exc.slug, UNAVAILABLE) from None
