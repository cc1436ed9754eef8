"""The broker's part in reaching closed pages: push subscriptions, escalation timers and the
webhook queue (interfaces and records; :mod:`pushsvc.broker.base` puts them on the Broker).

:class:`Escalations` keeps each patient's Web Push subscriptions per device and one timer per
(message, user) that escalates when no device of the user acks; :class:`WebhookQueue` holds the
webhook deliveries owed. Both hand each due item to exactly one caller at a time (a claim with
a lease), so every node may work on them (docs/monitoring.md § 7).
"""

from __future__ import annotations

import abc

import msgspec


class Subscription(msgspec.Struct, frozen=True, kw_only=True):
    """A browser's Web Push subscription (keys base64url). ``seen``: when its device last
    subscribed or ended a session (unix s); it is forgotten a retention period after that."""

    endpoint: str
    p256dh: str
    auth: str
    seen: float


class PushSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The ``push`` of a publish: notify the user's browsers ``after`` seconds unacked."""

    after: int
    title: str
    body: str = ""
    urgency: str = "normal"  # normal | high


NULL = msgspec.Raw(b"null")


class Escalation(msgspec.Struct, frozen=True, kw_only=True):
    """A (message, user) whose acks are watched. ``after``: seconds after publish when, still
    unacked, it escalates (0: no such step, only the verdict at expiry). ``data`` is kept only
    when there is a ``push`` (the payload carries it)."""

    message_id: str
    user: str
    event: str
    published_at: float
    expires_at: float
    after: float
    push: PushSpec | None = None
    data: msgspec.Raw = NULL

    @property
    def name(self) -> str:
        return f"{self.message_id}/{self.user}"


class Claimed(msgspec.Struct, kw_only=True):
    """An escalation due now, claimed by one process for the claim's lease.

    ``step``: ``"after"`` (the unacked check) or ``"final"`` (the verdict at expiry);
    ``acked``: (device, at) of its user's first ack, reported by :meth:`Escalations.settle`;
    ``pushed``: device -> when a push to it was accepted; ``attempts``: failed tries so far."""

    escalation: Escalation
    step: str = "after"
    acked: tuple[str, float] | None = None
    pushed: dict[str, float] = {}
    attempts: int = 0


class WebhookDelivery(msgspec.Struct, kw_only=True):
    """One event owed to one endpoint: ``body`` exactly as signed and sent every time."""

    event_id: str
    url: str
    body: bytes
    created: float
    attempts: int = 0


class WebhookFailure(msgspec.Struct, kw_only=True):
    """The last failed delivery to an endpoint."""

    at: float
    event_id: str
    error: str
    attempts: int
    gave_up: bool = False


class Escalations(abc.ABC):
    """Push subscriptions per (user, device), and escalation timers.

    Timers: :meth:`schedule` before the messages are published (a message that then fails to
    publish has no trail and its timer is dropped when it fires); :meth:`claim` hands each due
    timer to one caller and hides it for ``lease`` seconds, so a caller that dies mid-way
    leaves it to be claimed again; the caller then ends it with :meth:`finish` or moves it
    with :meth:`reschedule`. :meth:`settle` records the first ack of a user and makes the
    timer due at once (the claimer reports it)."""

    @abc.abstractmethod
    async def subscribe(self, user: str, device: str, subscription: Subscription) -> None:
        """Keep ``subscription`` for the device (replacing its earlier one)."""

    @abc.abstractmethod
    async def unsubscribe(self, user: str, device: str, endpoint: str | None = None) -> None:
        """Forget the device's subscription (only if its endpoint is ``endpoint``, when given)."""

    @abc.abstractmethod
    async def subscriptions(self, user: str) -> dict[str, Subscription]:
        """The user's subscriptions by device."""

    @abc.abstractmethod
    async def seen(self, user: str, device: str, at: float) -> None:
        """The device ended a session at ``at``: its subscription's retention starts again."""

    @abc.abstractmethod
    async def schedule(self, items: list[tuple[Escalation, float]]) -> None:
        """Start a timer per (escalation, due at, unix s); its step is ``"after"`` when the
        escalation has an ``after``, else ``"final"``."""

    @abc.abstractmethod
    async def claim(self, now: float, limit: int, lease: float) -> list[Claimed]:
        """Up to ``limit`` timers due at ``now``, each hidden from other claims until
        ``now + lease``."""

    @abc.abstractmethod
    async def settle(self, acks: list[tuple[str, str, str, float]]) -> None:
        """``(message id, user, device, at)`` acks: the first of each (message, user) with a
        timer is recorded and makes the timer due now."""

    @abc.abstractmethod
    async def pushed(self, name: str, message_id: str, device: str, at: float) -> None:
        """A push for the escalation ``name`` to ``device`` was accepted at ``at`` (also
        recorded in the message's trail as the device's ``push_sent_at``)."""

    @abc.abstractmethod
    async def reschedule(self, name: str, due: float, step: str, attempts: int) -> None:
        """Make the timer ``name`` due at ``due`` for ``step``."""

    @abc.abstractmethod
    async def finish(self, name: str) -> None:
        """The timer ``name`` is done."""

    @abc.abstractmethod
    async def pending(self) -> int:
        """Timers not finished."""


class WebhookQueue(abc.ABC):
    """Webhook deliveries owed, each retried until it is delivered or given up, and the last
    failure per endpoint. An event id is taken once (for ``keep`` seconds): enqueueing it
    again does nothing."""

    @abc.abstractmethod
    async def enqueue(
        self, event_id: str, body: bytes, urls: list[str], now: float, keep: float
    ) -> bool:
        """Owe ``body`` to each of ``urls`` now; False when ``event_id`` was taken already."""

    @abc.abstractmethod
    async def claim(self, now: float, limit: int, lease: float) -> list[WebhookDelivery]:
        """Up to ``limit`` deliveries due at ``now``, hidden from other claims for ``lease``."""

    @abc.abstractmethod
    async def delivered(self, delivery: WebhookDelivery) -> None: ...

    @abc.abstractmethod
    async def failed(
        self, delivery: WebhookDelivery, failure: WebhookFailure, retry_at: float | None
    ) -> None:
        """Record ``failure`` for its endpoint; try again at ``retry_at``, or never (None)."""

    @abc.abstractmethod
    async def depth(self) -> int:
        """Deliveries owed."""

    @abc.abstractmethod
    async def failures(self) -> dict[str, WebhookFailure]:
        """The last failure of each endpoint that had one."""
