"""The error tree of pushsvc. Every error raised on purpose derives from :class:`PushError`.

    PushError
    ├── ConfigError            settings are missing or inconsistent (refuse to start)
    ├── AuthError              a client token is invalid, expired or names a bad user (close 4001)
    ├── FrameError             a client frame is malformed, unknown or too large (close 4003/4004)
    ├── PublishError           a publish request cannot be accepted
    │   └── IdempotencyConflict   the caller used the key for another request (HTTP 409)
    └── BrokerError            the broker cannot be reached or answered badly
        └── BrokerUnavailable     the broker is down: publishes fail fast (HTTP 503)

Errors carry fields (``code``, ``slug``) so the edges map them to close codes, HTTP statuses and
error frames without parsing messages.
"""

from __future__ import annotations

from typing import Any

import msgspec

#: An error answer's JSON body.
ErrorDoc = dict[str, dict[str, Any]]


class PushError(Exception):
    """Root of every error pushsvc raises on purpose."""

    slug = "error"

    def __init__(self, message: str, *, slug: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if slug is not None:
            self.slug = slug


class ConfigError(PushError):
    slug = "config"


class AuthError(PushError):
    """A client token failed verification. ``code`` is the WebSocket close code."""

    slug = "unauthorized"
    code = 4001


class FrameError(PushError):
    """A client frame could not be accepted. ``code`` is the WebSocket close code to use."""

    slug = "protocol_error"

    def __init__(self, message: str, *, slug: str = "protocol_error", code: int = 4003) -> None:
        super().__init__(message, slug=slug)
        self.code = code


class PublishError(PushError):
    slug = "publish_failed"


class IdempotencyConflict(PublishError):
    slug = "idempotency_conflict"


class BrokerError(PushError):
    slug = "broker_error"


class BrokerUnavailable(BrokerError):
    slug = "broker_unavailable"


def error_document(code: str, message: str, *, retryable: bool = False, **extra: Any) -> ErrorDoc:
    """The body of every error answer of both listeners and of each failed item of a batch:
    ``{"error": {"code", "message", ["retryable": true], ...extra}}``."""
    error: dict[str, Any] = {"code": code, "message": message}
    if retryable:
        error["retryable"] = True
    error.update(extra)
    return {"error": error}


def error_body(code: str, message: str, *, retryable: bool = False, **extra: Any) -> bytes:
    """:func:`error_document` encoded as JSON: the one encoder of HTTP error bodies."""
    return msgspec.json.encode(error_document(code, message, retryable=retryable, **extra))
