"""What the publish endpoints share, whichever way a request came in (the FastAPI routes of
:mod:`pushsvc.http.internal` or :class:`pushsvc.http.lane.PublishLane`): the error answer, the
message built from validated fields, and the call to the publisher with its errors mapped to
HTTP."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
from starlette.responses import Response

from pushsvc.broker.base import PushSpec
from pushsvc.core.streams import ALL, topic_stream, user_stream
from pushsvc.errors import BrokerError, error_body, error_document
from pushsvc.node.publish import Outcome, Outgoing, Publisher, Result
from pushsvc.telemetry import metrics

if TYPE_CHECKING:
    from pushsvc.node.gateway import Node


JSON = "application/json"

#: What a caller hears when the broker fails: never the broker's (Redis's) own error text.
UNAVAILABLE = "the broker is unavailable"


class ApiError(Exception):
    """An error answer: ``status`` with ``{"error": {"code", "message"}}``; with
    ``"retryable": true`` in the error when ``retryable``, ``details`` in it (a 422's
    ``[{"loc", "msg"}]``) and ``results`` beside it (one per item of a batch) when given."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        retryable: bool = False,
        results: list[dict[str, Any]] | None = None,
        details: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retryable = retryable
        self.results = results
        self.details = details

    def response(self) -> Response:
        metrics.http_errors.labels(str(self.status)).inc()
        extra = {} if self.details is None else {"details": self.details}
        body: dict[str, Any] = error_document(
            self.code, self.message, retryable=self.retryable, **extra
        )
        if self.results is not None:
            body["results"] = self.results
        return Response(msgspec.json.encode(body), self.status, media_type=JSON)


def error_response(status: int, code: str, message: str, **extra: Any) -> Response:
    """The answer ``status`` with the error body (:func:`pushsvc.errors.error_body`)."""
    metrics.http_errors.labels(str(status)).inc()
    return Response(error_body(code, message, **extra), status, media_type=JSON)


#: What a 503 of a publish says: the outcome is unknown, and how to retry safely.
MAYBE = (
    "the broker did not confirm this publish: it may or may not have been published; retry with"
    " the same idempotency_key (its first message id is returned if it was)"
)


def outgoing(
    users: list[str] | None,
    topics: list[str] | None,
    event: str,
    data: bytes,
    ttl: int | None,
    ack: bool | None,
    idempotency_key: str | None,
    default_ttl: int,
    push: PushSpec | None = None,
) -> Outgoing:
    """The message of a validated request (:func:`pushsvc.http.bodies.message`) that names
    exactly one of ``users``, ``topics`` or (both None) everyone. ``ack`` defaults to true for
    users, false otherwise; a ``push`` escalates 1 s before the message expires at the
    latest."""
    if users is not None:
        streams = [user_stream(u) for u in dict.fromkeys(users)]
    elif topics is not None:
        streams = [topic_stream(t) for t in dict.fromkeys(topics)]
    else:
        streams = [ALL]
    ttl = ttl or default_ttl
    ack = ack if ack is not None else users is not None
    if push is not None and push.after >= ttl:  # escalate while there is still time
        push = msgspec.structs.replace(push, after=ttl - 1)
    return Outgoing(
        streams=streams,
        event=event,
        data=data,
        ttl=ttl,
        ack=ack,
        idempotency_key=idempotency_key,
        push=push,
    )


class Publishing:
    """Publishes validated messages for the endpoints of ``node``."""

    def __init__(self, node: Node) -> None:
        self.settings = node.settings
        self._publisher = Publisher(node)

    async def run(self, items: list[Outgoing], caller: str, batch: bool = False) -> list[Result]:
        """Publish ``items`` with the idempotency scope ``caller``; one result each when every
        one was published. Otherwise raises :class:`ApiError`: 503 ``retryable`` when any item
        may or may not have been published, else 409 ``idempotency_conflict``; for a ``batch``
        with ``results``, one per item in order (a result, or ``{"error": {...}}``)."""
        outcomes = await self._publisher.attempt(items, caller)
        failed = [o for o in outcomes if not isinstance(o, Result)]
        if not failed:
            return [o for o in outcomes if isinstance(o, Result)]
        maybe = [o for o in failed if isinstance(o, BrokerError)]
        first = maybe[0] if maybe else failed[0]
        status, message = (503, MAYBE) if maybe else (409, first.message)
        results = [_result_or_error(o) for o in outcomes] if batch else None
        if batch and len(failed) < len(outcomes):
            message = f"{len(failed)} of {len(outcomes)} messages failed (see results); " + message
        raise ApiError(status, first.slug, message, retryable=bool(maybe), results=results)


def _result_or_error(outcome: Outcome) -> dict[str, Any]:
    if isinstance(outcome, Result):
        return msgspec.structs.asdict(outcome)
    if isinstance(outcome, BrokerError):
        return error_document(outcome.slug, MAYBE, retryable=True)
    return error_document(outcome.slug, outcome.message)
