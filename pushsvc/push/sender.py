"""Web Push requests (RFC 8030 §5): one POST per subscription, over reused connections.

:meth:`WebPush.send` encrypts the payload for the subscription, signs with VAPID and says what
the push service answered: 201 accepted, 404/410 the subscription is gone, 429/5xx/network try
again (after ``Retry-After`` when it says), anything else a failure not worth repeating. At most
``concurrency`` requests are in flight at once, over as many kept-alive connections (httpx scans
its whole pool for every request: a small one is cheaper); each has ``timeout`` seconds.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from dataclasses import dataclass

import httpx

from pushsvc import __version__
from pushsvc.broker.base import Subscription
from pushsvc.push import ece
from pushsvc.push.vapid import Vapid


@dataclass(frozen=True, slots=True)
class PushAnswer:
    """``outcome``: ``sent`` | ``gone`` | ``retry`` | ``failed``; ``retry_after``: seconds the
    push service asked us to wait (None when it did not say); ``detail``: for logs."""

    outcome: str
    status: int = 0
    retry_after: float | None = None
    detail: str = ""


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


class WebPush:
    def __init__(self, vapid: Vapid, *, timeout: float = 10.0, concurrency: int = 16) -> None:
        self.vapid = vapid
        self._gate = asyncio.Semaphore(concurrency)
        self._client = httpx.AsyncClient(
            timeout=timeout,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            headers={"User-Agent": f"pushsvc/{__version__}"},
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def send(
        self, sub: Subscription, payload: bytes, *, ttl: int, urgency: str, topic: str
    ) -> PushAnswer:
        """Push ``payload`` (at most :data:`ece.MAX_PAYLOAD` bytes) to ``sub``. ``topic``: up
        to 32 base64url characters; a later push with the same topic replaces one the push
        service has not delivered yet."""
        now = time.time()
        try:
            body = ece.encrypt(payload, ece.b64decode(sub.p256dh), ece.b64decode(sub.auth))
        except ValueError as exc:  # a key no browser could have made: nothing to push to
            return PushAnswer("gone", detail=f"unusable subscription keys: {exc}"[:200])
        headers = {
            "TTL": str(max(0, ttl)),
            "Urgency": urgency,
            "Topic": topic,
            "Content-Encoding": "aes128gcm",
            "Content-Type": "application/octet-stream",
            "Authorization": self.vapid.authorization(sub.endpoint, now),
        }
        async with self._gate:
            try:
                r = await self._client.post(sub.endpoint, content=body, headers=headers)
            except httpx.HTTPError as exc:
                return PushAnswer("retry", detail=f"{type(exc).__name__}: {exc}"[:200])
        status = r.status_code
        if status in (200, 201, 202):
            return PushAnswer("sent", status)
        if status in (404, 410):
            return PushAnswer("gone", status)
        if status == 429 or status >= 500:
            return PushAnswer("retry", status, retry_after(r.headers.get("retry-after"), now),
                              r.text[:200])  # fmt: skip
        return PushAnswer("failed", status, detail=r.text[:200])
