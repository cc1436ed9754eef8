"""The node's session timers as one rule set: heartbeats, token expiries and ack deadlines.

:class:`Timers` holds, for every session of the node, what is due when: the next ping (a deque:
one heartbeat interval for all, so deadlines are appended in order), the token's ``exp`` (a heap)
and, through :class:`~pushsvc.core.acks.Deliveries`, the acks owed. Each :meth:`Timers.tick`
costs the items due, not the sessions.

Events in: :meth:`~Timers.accepted` (a hello was verified: its token expiry is noted),
:meth:`~Timers.opened` (the session is live: heartbeats start), :meth:`~Timers.renew` (a verified
``refresh``), :meth:`~Timers.closed` (the connection is gone) and :meth:`~Timers.tick`. Effects
out, as (session id, effect), from :mod:`pushsvc.core.session`: ``Write`` (a ping, a redelivery),
``Close`` (4011 ``not_acknowledged``, 4001 ``token_expired``, 4009 ``heartbeat_timeout``),
``TrailEvent`` and ``Count``.

Calling contract: call :meth:`~Timers.tick` with both clocks at every timer pass and apply what it
returns in order (a ``Close`` by sending it; a session gets at most one per tick); call
:meth:`~Timers.closed` when a session is gone, or its pings and expiry linger until due.
"""

from __future__ import annotations

import heapq
from collections import deque
from typing import Any

from pushsvc.core.acks import Deliveries
from pushsvc.core.session import AckEffect, Close, SessionCore, Write


class Timers:
    """What is due when for the node's sessions (by session id), and the rules once it is due.

    ``heartbeat``: seconds between two pings (monotonic clock); a ping still unanswered when the
    next one is due closes the session with 4009. Token expiries and ack deadlines are in unix s.
    """

    __slots__ = ("cores", "deliveries", "expiries", "heartbeat", "pings")

    def __init__(self, deliveries: Deliveries, heartbeat: float) -> None:
        self.deliveries = deliveries
        self.heartbeat = heartbeat
        self.cores: dict[str, SessionCore[Any]] = {}  # the sessions past hello, not yet gone
        self.pings: deque[tuple[float, str]] = deque()  # (monotonic due, session), in order
        self.expiries: list[tuple[float, str]] = []  # heap: (token exp, session)

    def accepted(self, session: str, core: SessionCore[Any]) -> None:
        """``session``'s hello was verified (:meth:`SessionCore.accept` was called): its token
        expires at ``core.expires``."""
        self.cores[session] = core
        heapq.heappush(self.expiries, (core.expires, session))

    def opened(self, session: str, mono: float) -> None:
        """``session`` is live at ``mono`` (monotonic): its first ping is due a heartbeat later."""
        self.pings.append((mono + self.heartbeat, session))

    def renew(self, session: str, user: str, claimed: str, expires: int) -> Write | Close | None:
        """A ``refresh`` of ``session`` (of ``user``) with a token of ``claimed`` expiring at
        ``expires``, verified and not revoked: :meth:`SessionCore.renew`; on ``refreshed`` the
        session now expires at ``expires``. None when the session is gone or closing."""
        core = self.cores.get(session)
        if core is None:
            return None
        effect = core.renew(user, claimed, expires)
        if isinstance(effect, Write):
            heapq.heappush(self.expiries, (core.expires, session))
        return effect

    def closed(self, session: str) -> list[str]:
        """``session`` is gone: forget its timers and what it owed; return those message ids."""
        self.cores.pop(session, None)
        return self.deliveries.closed(session)

    def tick(self, now: float, mono: float) -> list[tuple[str | None, AckEffect]]:
        """Everything due at ``now`` (unix s) and ``mono`` (monotonic), as (session id, effect):
        first what acks make (:meth:`Deliveries.tick`: redeliveries, their counter, 4011), then
        4001 ``token_expired`` for each session whose token was not refreshed past ``now``, then
        a ping for each live session whose heartbeat is due, or 4009 when its last ping was not
        answered. A session closed earlier in the list gets nothing more."""
        effects = self.deliveries.tick(now)
        closed = {session for session, effect in effects if isinstance(effect, Close)}
        cores = self.cores
        expiries = self.expiries
        while expiries and expiries[0][0] <= now:
            _, session = heapq.heappop(expiries)
            core = cores.get(session)
            if core is None or session in closed:
                continue
            if (close := core.expiry(now)) is not None:
                closed.add(session)
                effects.append((session, close))
        pings = self.pings
        while pings and pings[0][0] <= mono:
            _, session = pings.popleft()
            core = cores.get(session)
            if core is None or session in closed:
                continue  # gone or closing: no more pings
            effect = core.heartbeat(mono)
            if effect is None:
                continue
            effects.append((session, effect))
            if isinstance(effect, Write):
                pings.append((mono + self.heartbeat, session))
        return effects
