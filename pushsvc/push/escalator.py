"""The escalator: every node runs one; each due timer is handled by exactly one of them.

Timers are made by the publish path (:meth:`Escalator.plan`, written before the messages are
appended, so an accepted message never lacks its timer), one per (message, user) when the
message asks for acks and either carries a ``push`` or webhooks are configured. A timer has
up to two steps:

- ``after`` (``push.after``, else ``escalate_after``, seconds after publish): when no device of
  the user has acked, ``message.unacked`` is queued and one Web Push goes to each of the user's
  subscriptions not pushed yet; 429/5xx/network answers move the timer ahead (backoff, or the
  push service's ``Retry-After``) and only the subscriptions still owed are tried again.
- ``final`` (the message's expiry plus ``monitor_grace``, only with webhooks): the verdict,
  ``message.lost`` when a device of the user was written the message, else
  ``message.expired``.

The first ack of the user (:meth:`Escalations.settle`, called when a node flushes its acks)
makes the timer due at once: it then queues ``message.acked`` and ends.

Exactly once: a claim hides a timer from every other process for ``escalation_lease`` seconds;
a process that dies mid-way leaves it to be claimed again when the lease ends, and each push
accepted (201) is recorded before the next step, so a subscription already pushed is skipped.
The one window left is a push service's 201 lost with its process: that push is sent again,
with the same ``Topic`` header (the message id), so the push service replaces the first one if
it has not reached the device, and the service worker shows one notification per message id.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import msgspec
from cryptography.hazmat.primitives.asymmetric import ec

from pushsvc.broker.base import (
    NULL,
    Broker,
    Claimed,
    Escalation,
    PushSpec,
    Subscription,
    device_key,
)
from pushsvc.core import frames
from pushsvc.core.backoff import backoff_ceiling
from pushsvc.core.streams import user_stream
from pushsvc.core.trail import Trail
from pushsvc.errors import BrokerError, FrameError
from pushsvc.push import ece
from pushsvc.push.sender import WebPush
from pushsvc.push.subscriptions import checked
from pushsvc.push.vapid import Vapid
from pushsvc.settings import Settings
from pushsvc.telemetry import metrics
from pushsvc.webhooks import WebhookCourier

if TYPE_CHECKING:
    from pushsvc.node.session import Session
    from pushsvc.types import Message

log = logging.getLogger(__name__)

#: Events of pushsvc's own messages (the monitor's canary, ``pushsvc.canary``): they never
#: escalate and are nobody's webhook.
OWN_EVENTS = "pushsvc."
BATCH = 256  # timers per claim
IN_FLIGHT = 256  # timers handled at once by one process: all well within their lease
ENDED_LIMIT = 100_000  # session ends kept while the broker is unreachable
IDLE = 0.1  # seconds between claims when fewer than a batch were due
PUSHED_FRAME = frames.ws_text_frame(frames.PUSH_SUBSCRIBED)


class _Payload(msgspec.Struct):
    id: str
    event: str
    data: msgspec.Raw
    title: str
    body: str
    stream: str
    offset: str


_encode = msgspec.json.Encoder().encode


def load_vapid(settings: Settings) -> Vapid | None:
    """The deployment's VAPID key, or None when none is configured. In dev mode without one, a
    key made now, for this process only (pages subscribe again after a restart)."""
    if settings.vapid_private_key is not None:
        return Vapid.load(settings.vapid_private_key, settings.vapid_subject)
    if settings.dev:
        log.warning("dev mode: a VAPID key for this process only (PUSHSVC_VAPID_PRIVATE_KEY)")
        key = ec.generate_private_key(ec.SECP256R1())
        return Vapid(key, settings.vapid_subject or "mailto:dev@localhost")
    return None


def first_ack(trail: Trail, user: str) -> tuple[str, float] | None:
    """(device, acked at) of the first ack by a device of ``user`` in ``trail``."""
    prefix = user + "/"
    acks = [
        (d.acked_at, d.device)
        for d in trail.deliveries.values()
        if d.acked_at is not None and d.device.startswith(prefix)
    ]
    if not acks:
        return None
    at, device = min(acks)
    return device, at


class Escalator:
    """See the module docstring. ``run()`` until cancelled, then ``aclose()``."""

    def __init__(self, broker: Broker, settings: Settings) -> None:
        self._broker = broker
        self._settings = settings
        self.vapid = load_vapid(settings)
        self.sender = WebPush(self.vapid) if self.vapid is not None else None
        self.webhooks = WebhookCourier(broker, settings)
        self._lease = settings.escalation_lease
        self._tasks: set[asyncio.Task[None]] = set()
        self._ended: list[tuple[str, str, float]] = []
        self._firing: set[asyncio.Task[None]] = set()  # claimed timers being handled

    @property
    def enabled(self) -> bool:
        """Whether any message gets a timer (a VAPID key or webhooks are configured)."""
        return self.vapid is not None or self.webhooks.enabled

    async def aclose(self) -> None:
        """Cancel what is in flight (a claimed timer is claimed again when its lease ends) and
        close the HTTP clients. Call after :meth:`run` was cancelled."""
        for task in [*self._tasks, *self._firing]:
            task.cancel()
        if self._firing:
            await asyncio.wait(self._firing, timeout=2.0)
        if self.sender is not None:
            await self.sender.aclose()
        await self.webhooks.aclose()

    # -- the publish path -------------------------------------------------------------------

    def plan(
        self, message: Message, streams: list[str], push: PushSpec | None
    ) -> list[tuple[Escalation, float]]:
        """The timers of a message about to be published (none unless it asks for acks)."""
        if not self.enabled or not message.ack or message.event.startswith(OWN_EVENTS):
            return []
        if push is None and not self.webhooks.enabled:
            return []
        after = push.after if push is not None else self._settings.escalate_after or 0
        if not self.webhooks.enabled and after == 0:
            return []
        published, expires = message.ts / 1000, message.expires / 1000
        due = published + after if after else expires + self._settings.monitor_grace
        out = []
        for stream in streams:
            kind, _, user = stream.partition(":")
            if kind != "user":
                continue
            e = Escalation(
                message_id=message.id, user=user, event=message.event, published_at=published,
                expires_at=expires, after=after, push=push,
                data=message.data if push is not None else NULL,
            )  # fmt: skip
            out.append((e, due))
        return out

    async def settle(self, acks: list[tuple[str, str, str, float]]) -> None:
        """Acks just recorded, as ``(message id, user, device, at)``."""
        if self.enabled and acks:
            await self._broker.escalations.settle(acks)

    # -- subscriptions (frames from sessions) -----------------------------------------------

    def frame(self, session: Session, frame: frames.PushSubscribe | frames.PushUnsubscribe) -> None:
        """A ``push_subscribe`` or ``push_unsubscribe`` frame of a welcomed ``session``."""
        if self.vapid is None:
            raise FrameError("Web Push is not configured on this server", slug="push_unavailable")
        if isinstance(frame, frames.PushSubscribe):
            sub = checked(frame.subscription, time.time())
            self._spawn(self._subscribe(session, sub))
        else:
            self._spawn(self._unsubscribe(session))

    def _spawn(self, job: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(job)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _subscribe(self, session: Session, sub: Subscription) -> None:
        try:
            await self._broker.escalations.subscribe(session.user, session.device, sub)
        except BrokerError as exc:
            session.close(1011, "push_subscribe_failed", f"subscription not kept: {exc.message}")
            return
        session.write(PUSHED_FRAME)
        log.info("push subscribed", extra={"user": session.user, "device": session.device,
                                           "endpoint": sub.endpoint[:64]})  # fmt: skip

    async def _unsubscribe(self, session: Session) -> None:
        try:
            await self._broker.escalations.unsubscribe(session.user, session.device)
        except BrokerError as exc:
            session.close(1011, "push_unsubscribe_failed", f"not forgotten: {exc.message}")

    def session_ended(self, user: str, device: str, at: float) -> None:
        """A device's session ended: its subscription's retention starts again (written in
        batches by :meth:`run`; at most :data:`ENDED_LIMIT` kept, the oldest dropped)."""
        if self.vapid is not None:
            self._ended.append((user, device, at))
            if len(self._ended) > ENDED_LIMIT:
                del self._ended[0]

    async def _write_ended(self) -> None:
        ended, self._ended = self._ended, []
        for i, (user, device, at) in enumerate(ended):
            try:
                await self._broker.escalations.seen(user, device, at)
            except BrokerError:
                self._ended[:0] = ended[i:]  # the next round writes them
                raise

    # -- the timers -------------------------------------------------------------------------

    async def run(self) -> None:
        """Handle due timers and deliver webhooks, until cancelled."""
        if not self.enabled:
            return
        async with asyncio.TaskGroup() as group:
            if self.webhooks.enabled:
                group.create_task(self.webhooks.run())
            group.create_task(self._timers())

    async def _timers(self) -> None:
        """Claim due timers while fewer than :data:`IN_FLIGHT` are being handled: a slow push
        service holds up its own timers, not the ones claimed with them."""
        firing = self._firing
        while True:
            room = min(BATCH, IN_FLIGHT - len(firing))
            claimed: list[Claimed] = []
            try:
                if self._ended:
                    await self._write_ended()
                if room > 0:
                    claimed = await self._broker.escalations.claim(time.time(), room, self._lease)
            except (BrokerError, OSError) as exc:
                log.warning("escalation claim failed, will retry", extra={"error": str(exc)})
            loop = asyncio.get_running_loop()
            for c in claimed:
                task = loop.create_task(self._fire(c))
                firing.add(task)
                task.add_done_callback(firing.discard)
            if room <= 0 or len(claimed) < room:
                await asyncio.sleep(IDLE)

    async def _fire(self, c: Claimed) -> None:
        try:
            outcome = await self.fire(c, time.time())
        except BrokerError as exc:  # left claimed: tried again when the lease ends
            log.warning("escalation failed, will retry", extra={"error": str(exc)})
            return
        except Exception:  # a bug must not stop every other escalation: this one is retried
            log.exception("escalation failed", extra={"escalation": c.escalation.name})
            return
        metrics.escalations.labels(outcome).inc()

    async def fire(self, c: Claimed, now: float) -> str:
        """Handle one claimed timer; what it found (``acked``, ``unacked``, ``expired``,
        ``lost``, ``dropped``, or ``retry`` when it was moved ahead)."""
        e = c.escalation
        esc = self._broker.escalations
        acked = c.acked
        trail = await self._broker.ledger.trail(e.message_id)
        if trail is None and acked is None:
            await esc.finish(e.name)  # never published, or long gone
            return "dropped"
        if acked is None and trail is not None:
            acked = first_ack(trail, e.user)
        if acked is not None:
            await self.webhooks.emit(
                "message.acked",
                e,
                {"device": acked[0].partition("/")[2], "acked_at": acked[1]},
                now,
            )
            await esc.finish(e.name)
            return "acked"
        assert trail is not None
        if c.step == "final":
            prefix = e.user + "/"
            written = any(
                d.sent_at is not None and d.device.startswith(prefix)
                for d in trail.deliveries.values()
            )
            kind = "message.lost" if written else "message.expired"
            await self.webhooks.emit(kind, e, {"expires_at": e.expires_at}, now)
            await esc.finish(e.name)
            return kind.removeprefix("message.")
        pushed = dict(c.pushed)
        if c.attempts == 0:
            await self.webhooks.emit("message.unacked", e, {"after": e.after}, now)
        if e.push is not None and self.sender is not None and now < e.expires_at:
            wait = await self._push(c, trail, pushed, now)
            if wait is not None:
                delay = max(wait, backoff_ceiling(c.attempts, 1.0, 300.0))
                # Retry-After counts from the answer, not from when this step began
                await esc.reschedule(e.name, time.time() + delay, "after", c.attempts + 1)
                return "retry"
        if self.webhooks.enabled:
            final = e.expires_at + self._settings.monitor_grace
            await esc.reschedule(e.name, max(final, now), "final", 0)
        else:
            await esc.finish(e.name)
        return "unacked"

    async def _push(
        self, c: Claimed, trail: Trail, pushed: dict[str, float], now: float
    ) -> float | None:
        """Push to each subscription of the user not pushed yet; None when none needs another
        try, else the least wait a push service asked for (0 when none said)."""
        e = c.escalation
        assert e.push is not None
        assert self.sender is not None
        esc = self._broker.escalations
        subs = await esc.subscriptions(e.user)
        owed = {d: s for d, s in subs.items() if device_key(e.user, d) not in pushed}
        if not owed:
            return None
        stream = user_stream(e.user)
        payload = self._payload(e, stream, trail.streams.get(stream, ""))
        ttl = int(e.expires_at - now)
        waits: list[float] = []
        sender, urgency = self.sender, e.push.urgency

        async def one(device: str) -> None:
            sub = owed[device]
            answer = await sender.send(
                sub, payload, ttl=ttl, urgency=urgency, topic=e.message_id[:32]
            )
            metrics.push_sent.labels(answer.outcome).inc()
            if answer.outcome == "sent":
                await esc.pushed(e.name, e.message_id, device_key(e.user, device), time.time())
            elif answer.outcome == "gone":
                await esc.unsubscribe(e.user, device, sub.endpoint)
            elif answer.outcome == "retry":
                waits.append(answer.retry_after or 0.0)
            else:
                log.warning("push refused", extra={"status": answer.status,
                                                   "detail": answer.detail})  # fmt: skip

        async with asyncio.TaskGroup() as group:
            for device in owed:
                group.create_task(one(device))
        return min(waits) if waits else None

    @staticmethod
    def _payload(e: Escalation, stream: str, offset: str) -> bytes:
        """The push's JSON; ``data`` is left out (null) when it would not fit a push."""
        assert e.push is not None
        body = _Payload(e.message_id, e.event, e.data, e.push.title, e.push.body, stream, offset)
        payload = _encode(body)
        if len(payload) > ece.MAX_PAYLOAD:
            payload = _encode(msgspec.structs.replace(body, data=NULL))
        return payload
