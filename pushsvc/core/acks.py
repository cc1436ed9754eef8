"""The node's ack ledger: what each session still owes an ack for, and what is due again.

A message published with ``ack: true`` is registered with :meth:`AckLedger.sent` when it is written
to a session. If the session does not ack it within ``ack_timeout`` it is due for redelivery, up to
``max_attempts`` writes in all; after that the session is *exhausted* and must be closed with 4011
(it recovers by resuming, and the message is owed to the device again).

:class:`Deliveries` is the ledger as session rules, for the node: events in (``sent``, ``acked``,
``tick(now)``, ``closed``), effects out (:mod:`pushsvc.core.session`'s ``Write``, the 4011
``Close``, ``TrailEvent``, ``Count``).

Calling contract: after :meth:`due` returns redeliveries you must write each payload again (the
ledger has already counted the attempt); after it returns exhausted sessions you must close them
and call :meth:`forget_session`.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pushsvc.core.session import (
    NOT_ACKNOWLEDGED,
    AckEffect,
    Count,
    SessionCore,
    TrailEvent,
    Write,
)

P = TypeVar("P")


@dataclass(slots=True)
class Pending(Generic[P]):
    payload: P
    first_sent: float
    due: float
    attempts: int


@dataclass(frozen=True, slots=True)
class Redelivery(Generic[P]):
    session: str
    message_id: str
    payload: P
    attempt: int


class AckLedger(Generic[P]):
    """Pending acks per session with one timer heap for the whole node."""

    def __init__(self, ack_timeout: float, max_attempts: int) -> None:
        self.ack_timeout = ack_timeout
        self.max_attempts = max_attempts
        self._pending: dict[str, dict[str, Pending[P]]] = {}
        self._heap: list[tuple[float, int, str, str]] = []
        self._seq = 0

    def sent(self, session: str, message_id: str, payload: P, now: float) -> int:
        """Record a write of ``message_id`` to ``session``; return the attempt number (1-based).

        Writing a message the session already owes counts as another attempt.
        """
        owed = self._pending.setdefault(session, {})
        entry = owed.get(message_id)
        if entry is None:
            entry = Pending(payload, now, now + self.ack_timeout, 1)
            owed[message_id] = entry
        else:
            entry.attempts += 1
            entry.due = now + self.ack_timeout
        self._push(entry.due, session, message_id)
        return entry.attempts

    def acked(self, session: str, ids: list[str]) -> list[str]:
        """Settle ``ids`` for ``session``; return those that were pending (first acks only)."""
        owed = self._pending.get(session)
        if not owed:
            return []
        settled = [i for i in ids if owed.pop(i, None) is not None]
        if not owed:
            del self._pending[session]
        return settled

    def due(self, now: float) -> tuple[list[Redelivery[P]], list[str]]:
        """Pop everything due at ``now``: (redeliveries to write, sessions to close with 4011)."""
        redeliver: list[Redelivery[P]] = []
        exhausted: list[str] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            due, _, session, message_id = heapq.heappop(heap)
            entry = self._pending.get(session, {}).get(message_id)
            if entry is None or entry.due != due or session in exhausted:
                continue  # acked, rescheduled, or its session is already being closed
            if entry.attempts >= self.max_attempts:
                exhausted.append(session)
                continue
            entry.attempts += 1
            entry.due = now + self.ack_timeout
            self._push(entry.due, session, message_id)
            redeliver.append(Redelivery(session, message_id, entry.payload, entry.attempts))
        return redeliver, exhausted

    def forget_session(self, session: str) -> list[str]:
        """Drop a closed session's pending acks; return the ids it still owed."""
        return list(self._pending.pop(session, {}))

    def pending(self, session: str) -> int:
        return len(self._pending.get(session, ()))

    def attempts(self, session: str, message_id: str) -> int:
        entry = self._pending.get(session, {}).get(message_id)
        return 0 if entry is None else entry.attempts

    def __len__(self) -> int:
        return sum(len(v) for v in self._pending.values())

    def _push(self, due: float, session: str, message_id: str) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, session, message_id))


class Deliveries:
    """The acks the node's sessions owe, by session id, and the rules on them: redeliver after
    ``ack_timeout``, up to ``max_attempts`` writes in all, then close with 4011 (an
    :class:`AckLedger`: one timer heap serves every session).

    Calling contract: call :meth:`sent` after writing a message that asks for an ack and put a
    ``sent`` event in the trail with the attempt it returns (the fan-out's hot path: no effect
    object per delivery); apply what :meth:`acked` and :meth:`tick` return, in order; call
    :meth:`closed` when a session is gone.
    """

    __slots__ = ("ledger",)

    def __init__(self, ack_timeout: float, max_attempts: int) -> None:
        self.ledger: AckLedger[bytes] = AckLedger(ack_timeout, max_attempts)

    def sent(self, session: str, message_id: str, frame: bytes, now: float) -> int:
        """``frame`` (pre-framed) of ``message_id`` was written to ``session`` at ``now``; return
        the attempt number (a write of a message the session already owes is another one)."""
        return self.ledger.sent(session, message_id, frame, now)

    def acked(
        self, session: str, core: SessionCore[Any], ids: list[str], now: float
    ) -> list[TrailEvent | Count]:
        """``session`` (whose rules are ``core``) acked ``ids`` at ``now`` (unix s): an ``acked``
        ``TrailEvent`` per first ack, then ``Count("acked")``; nothing when none was owed."""
        settled = self.ledger.acked(session, ids)
        if not settled:
            return []
        core.settled(len(settled), now)
        effects: list[TrailEvent | Count] = [TrailEvent("acked", i, now) for i in settled]
        effects.append(Count("acked", len(settled)))
        return effects

    def tick(self, now: float) -> list[tuple[str | None, AckEffect]]:
        """Everything due at ``now`` (unix s), as (session id, effect): for each redelivery a
        ``Write`` of the frame again and its ``sent`` ``TrailEvent``; then one
        ``Count("redeliveries")`` for the node (session None); then the 4011 ``NOT_ACKNOWLEDGED``
        for each session that used up its attempts (already forgotten here)."""
        redeliver, exhausted = self.ledger.due(now)
        effects: list[tuple[str | None, AckEffect]] = []
        for r in redeliver:
            effects.append((r.session, Write(r.payload)))
            effects.append((r.session, TrailEvent("sent", r.message_id, now, r.attempt)))
        if redeliver:
            effects.append((None, Count("redeliveries", len(redeliver))))
        for session in exhausted:
            self.ledger.forget_session(session)
            effects.append((session, NOT_ACKNOWLEDGED))
        return effects

    def closed(self, session: str) -> list[str]:
        """``session`` is gone: forget what it owed; return those message ids."""
        return self.ledger.forget_session(session)

    def pending(self, session: str) -> int:
        """How many acks ``session`` owes."""
        return self.ledger.pending(session)

    def __len__(self) -> int:
        return len(self.ledger)
