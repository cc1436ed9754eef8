"""Webhooks: what became of a message, told to the hospital's own endpoints, signed.

Events (one per message and user): ``message.acked`` (the first ack by a device of that user),
``message.unacked`` (no ack ``after`` seconds after publish), ``message.expired`` (its ttl
passed and no device of the user ever got it), ``message.lost`` (written to a device, never
acked, ttl passed). Body::

    {"id": "<event id>", "type": "message.acked", "created": <unix s>,
     "message": {"id", "event", "user", "published_at"}, "detail": {...}}

Header ``Pushsvc-Signature: t=<unix s>,v1=<hex HMAC-SHA256(secret, "<t>." + raw body)>``; ``t``
is the time of the attempt, so a receiver can refuse old replays.

Delivery is at least once: :meth:`WebhookCourier.emit` queues the event in the broker (an event
id is taken once: its id is derived from the message, the user and the type), and every node's
courier claims due deliveries, POSTs them and ends each on a 2xx; anything else is retried with
exponential backoff (1 s doubling up to an hour) for 24 h after the event, the same body and
id each time, whichever node tries.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
import time

import httpx
import msgspec

from pushsvc import __version__
from pushsvc.broker.base import Broker, Escalation, WebhookDelivery, WebhookFailure
from pushsvc.core.backoff import backoff_ceiling
from pushsvc.errors import BrokerError
from pushsvc.settings import Settings
from pushsvc.telemetry import metrics

log = logging.getLogger(__name__)

EVENTS = ("message.acked", "message.unacked", "message.expired", "message.lost")
RETRY_FOR = 24 * 3600.0  # seconds after the event that deliveries are retried
KEEP = RETRY_FOR + 3600  # an event id is taken this long
BACKOFF_BASE = 1.0
BACKOFF_CAP = 3600.0
BATCH = 256
IN_FLIGHT = 512  # deliveries under way at once (each waits for a slot of CONCURRENCY)
IDLE = 0.25  # seconds between claims when nothing was due
#: Requests in flight, and kept-alive connections (per endpoint, as many): few connections keep
#: httpx's pool cheap (it scans them all for every request), a kept one saves the handshake.
CONCURRENCY = 16


class _About(msgspec.Struct):
    id: str
    event: str
    user: str
    published_at: float


class _Event(msgspec.Struct):
    id: str
    type: str
    created: int
    message: _About
    detail: dict[str, object]


_encode = msgspec.json.Encoder().encode


def event_id(message_id: str, user: str, kind: str) -> str:
    """The id of the ``kind`` event of (message, user): the same whoever makes it, whenever."""
    digest = hashlib.sha256(f"{message_id}/{user}/{kind}".encode()).hexdigest()
    return "evt_" + digest[:24]


def event_body(kind: str, e: Escalation, created: float, detail: dict[str, object]) -> bytes:
    about = _About(e.message_id, e.event, e.user, e.published_at)
    return _encode(_Event(event_id(e.message_id, e.user, kind), kind, int(created), about, detail))


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The ``Pushsvc-Signature`` header value of ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def retry_at(attempts: int, created: float, now: float) -> float | None:
    """When to try again after ``attempts`` failed tries (1 for the first), or None when the
    24 h are over. Jittered so that a recovered endpoint is not hit by every event at once."""
    delay = backoff_ceiling(attempts - 1, BACKOFF_BASE, BACKOFF_CAP)
    at = now + delay * random.uniform(0.8, 1.0)
    return at if at - created <= RETRY_FOR else None


class WebhookCourier:
    """Queues events and delivers them. ``run()`` until cancelled, then ``aclose()``."""

    def __init__(self, broker: Broker, settings: Settings, *, timeout: float = 10.0) -> None:
        self._broker = broker
        self._urls = list(settings.webhook_urls)
        self._secret = settings.webhook_secret
        self._lease = max(settings.escalation_lease, 2 * timeout)
        self._gate = asyncio.Semaphore(CONCURRENCY)
        self._firing: set[asyncio.Task[None]] = set()
        self._client = httpx.AsyncClient(
            timeout=timeout,
            limits=httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY),
            headers={"User-Agent": f"pushsvc/{__version__}"},
        )

    @property
    def enabled(self) -> bool:
        return bool(self._urls)

    async def aclose(self) -> None:
        """Cancel deliveries under way (each is claimed again when its lease ends) and close
        the HTTP client. Call after :meth:`run` was cancelled."""
        for task in list(self._firing):
            task.cancel()
        if self._firing:
            await asyncio.wait(self._firing, timeout=2.0)
        await self._client.aclose()

    async def emit(self, kind: str, e: Escalation, detail: dict[str, object], now: float) -> None:
        """Queue the ``kind`` event of ``e`` (nothing when it was queued before)."""
        if not self._urls:
            return
        body = event_body(kind, e, now, detail)
        await self._broker.webhooks.enqueue(
            event_id(e.message_id, e.user, kind), body, self._urls, now, KEEP
        )

    async def run(self) -> None:
        """Deliver what is due, until cancelled: claim while fewer than :data:`IN_FLIGHT`
        deliveries are under way (a slow endpoint holds up its own deliveries only)."""
        queue = self._broker.webhooks
        firing = self._firing
        while True:
            room = min(BATCH, IN_FLIGHT - len(firing))
            claimed: list[WebhookDelivery] = []
            try:
                if room > 0:
                    claimed = await queue.claim(time.time(), room, self._lease)
                metrics.webhook_queue_depth.set(await queue.depth())
            except (BrokerError, OSError) as exc:
                log.warning("webhook claim failed, will retry", extra={"error": str(exc)})
            loop = asyncio.get_running_loop()
            for delivery in claimed:
                task = loop.create_task(self._deliver(delivery))
                firing.add(task)
                task.add_done_callback(firing.discard)
            if room <= 0 or len(claimed) < room:
                await asyncio.sleep(IDLE)

    async def _deliver(self, d: WebhookDelivery) -> None:
        try:
            await self._attempt(d)
        except Exception:  # a bug must not go unseen; the delivery is retried after its lease
            log.exception("webhook delivery failed", extra={"event": d.event_id, "url": d.url})

    async def _attempt(self, d: WebhookDelivery) -> None:
        now = time.time()
        headers = {
            "Content-Type": "application/json",
            "Pushsvc-Signature": signature(self._secret, int(now), d.body),
            "Pushsvc-Event-Id": d.event_id,
        }
        async with self._gate:
            try:
                r = await self._client.post(d.url, content=d.body, headers=headers)
                error = "" if 200 <= r.status_code < 300 else f"HTTP {r.status_code}"
            except (httpx.HTTPError, httpx.InvalidURL, OSError) as exc:
                error = f"{type(exc).__name__}: {exc}"[:200]
        queue = self._broker.webhooks
        try:
            if not error:
                await queue.delivered(d)
                metrics.webhook_deliveries.labels("delivered").inc()
                return
            attempts = d.attempts + 1
            again = retry_at(attempts, d.created, now)
            failure = WebhookFailure(
                at=now, event_id=d.event_id, error=error, attempts=attempts, gave_up=again is None
            )
            await queue.failed(d, failure, again)
        except BrokerError as exc:  # the claim's lease runs out and it is tried again
            log.warning("webhook outcome not recorded", extra={"error": str(exc)})
            return
        metrics.webhook_deliveries.labels("retry" if again is not None else "gave_up").inc()
        if again is None:
            log.warning("webhook given up", extra={"url": d.url, "event": d.event_id})
