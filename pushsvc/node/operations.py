"""What an operator asks of the cluster through one node: its live sessions, closing a patient's
sessions, revoking a patient's tokens, draining a node, a message's trace context, and the game-day
faults.

The internal API's operator and admin routes (:mod:`pushsvc.http.cluster_admin`,
:mod:`pushsvc.http.admin`) are thin: they check the request, call one method here and encode the
answer. Nothing here knows HTTP: "not found" is ``None``, and every collaborator is passed in, so
the actions run the same from a route, a test or a future transport.

The actions that reach other nodes do so through the broker's bus as commands (``close_session``,
``revoke_user``, ``drain``); each node applies the commands addressed to it (see
:meth:`pushsvc.node.gateway.Node.command`), so no node ever waits on another.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Callable, Mapping
from typing import Generic, Protocol, TypeVar

import msgspec

from pushsvc.broker.base import Broker, Command, History, SessionInfo
from pushsvc.core import offsets
from pushsvc.core import session as core
from pushsvc.errors import FrameError
from pushsvc.node.faults import Faults
from pushsvc.records import (
    FaultsState,
    HeldSession,
    LocalSessionList,
    MessageTrace,
    NodeDraining,
    UserRevoked,
)

log = logging.getLogger(__name__)

#: Sessions one patient can have closed in one request (far above any real count of devices).
MAX_USER_SESSIONS = 10_000


class LocalSession(Protocol):
    """What the actions read of a session of this node."""

    @property
    def user(self) -> str: ...

    @property
    def connected_at(self) -> float: ...


S = TypeVar("S", bound=LocalSession)


class Operations(Generic[S]):
    """The operator actions of the node ``node_id``.

    ``sessions``: the node's open sessions by id (read, never changed here); ``describe``: a
    session's registry record with its live counters; ``catch_up``: catch up from history (after
    the ``stop_bus`` fault is cleared); ``token_max_ttl``: how long a revocation must outlive the
    tokens it refuses; ``faults_enabled``: the node was started with ``--enable-fault-injection``.
    """

    def __init__(
        self,
        node_id: str,
        broker: Broker,
        sessions: Mapping[str, S],
        describe: Callable[[S], SessionInfo],
        faults: Faults,
        catch_up: Callable[[], None],
        *,
        token_max_ttl: int,
        faults_enabled: bool,
    ) -> None:
        self.node_id = node_id
        self._broker = broker
        self._sessions = sessions
        self._describe = describe
        self._faults = faults
        self._catch_up = catch_up
        self._token_max_ttl = token_max_ttl
        self.faults_enabled = faults_enabled

    def local_sessions(self, user: str | None, limit: int) -> LocalSessionList:
        """This node's ``limit`` oldest sessions (of ``user`` only, when given)."""
        mine = (s for s in self._sessions.values() if user is None or s.user == user)
        oldest = heapq.nsmallest(limit, mine, key=lambda s: s.connected_at)
        return LocalSessionList(node=self.node_id, sessions=[self._describe(s) for s in oldest])

    async def close_user(self, user: str) -> list[HeldSession] | None:
        """Ask every node holding a session of ``user`` to close it with 4010; None when the
        patient has none. Raises :class:`pushsvc.errors.BrokerError` when the broker is down."""
        found = await self._broker.registry.sessions(user, None, MAX_USER_SESSIONS)
        holders = {s.id: s.node for s in found}
        # the registry learns of a session one accounting flush after it opened
        holders.update({sid: self.node_id for sid, s in self._sessions.items() if s.user == user})
        if not holders:
            return None
        for session_id, holder in sorted(holders.items()):
            await self._broker.bus.send_command(
                Command(kind="close_session", node=holder, session=session_id, code=4010)
            )
        return [HeldSession(session=s, node=n) for s, n in sorted(holders.items())]

    async def revoke_user(self, user: str, now: float | None = None) -> UserRevoked:
        """Refuse ``user``'s tokens issued before now, on every node, also those started later
        (the record lives as long as the longest token); live sessions holding one close 4001."""
        now = time.time() if now is None else now
        not_before = core.not_before(now)
        ttl = self._token_max_ttl
        await self._broker.registry.revoke(user, not_before, ttl)
        await self._broker.bus.send_command(
            Command(kind="revoke_user", node="*", code=4001, user=user, not_before=not_before)
        )
        return UserRevoked(user=user, not_before=not_before, expires=now + ttl)

    async def drain(self, node_id: str) -> NodeDraining | None:
        """Ask the live node ``node_id`` to drain (its sessions close 1001 and reconnect
        elsewhere); None when no live node has that id."""
        live = {n.id: n for n in await self._broker.registry.nodes()}
        found = live.get(node_id)
        if found is None:
            return None
        await self._broker.bus.send_command(Command(kind="drain", node=node_id))
        return NodeDraining(node=node_id, connections=found.connections, draining=True)

    async def message_trace(self, message_id: str) -> MessageTrace | None:
        """The W3C ``traceparent`` the publish of ``message_id`` recorded and its trace id (both
        empty when it was not traced); None when the message has no trail."""
        found = await self._broker.ledger.trail(message_id[:64])
        if found is None:
            return None
        parent = await recorded_traceparent(self._broker.history, found.id, found.streams)
        return MessageTrace(id=found.id, traceparent=parent, trace_id=trace_id(parent))

    def _check_enabled(self) -> None:
        if not self.faults_enabled:
            raise PermissionError("fault injection is off on this node")

    def faults(self) -> FaultsState:
        return FaultsState(
            node=self.node_id, enabled=self.faults_enabled, faults=self._faults.describe()
        )

    def inject(self, drop_deliveries: float | None, stop_bus: bool | None) -> FaultsState:
        """Set the given game-day faults (only when :attr:`faults_enabled`: check first)."""
        self._check_enabled()
        faults = self._faults
        if drop_deliveries is not None:
            faults.drop_deliveries = drop_deliveries
        if stop_bus is not None:
            if faults.stop_bus and not stop_bus:
                faults.stop_bus = False
                self._catch_up()
            faults.stop_bus = stop_bus
        log.warning(
            "faults injected",
            extra={"node": self.node_id, **msgspec.structs.asdict(faults.describe())},
        )
        return self.faults()

    def clear_faults(self) -> FaultsState:
        """Clear every game-day fault, catching up on what a stopped bus swallowed."""
        self._check_enabled()
        faults = self._faults
        stopped = faults.stop_bus
        faults.drop_deliveries = 0.0
        faults.stop_bus = False
        if stopped:
            self._catch_up()
        log.warning("faults cleared", extra={"node": self.node_id})
        return self.faults()


async def recorded_traceparent(history: History, message_id: str, streams: dict[str, str]) -> str:
    """The ``traceparent`` stored with ``message_id`` at its offset in one of ``streams``; ""
    when the publish was not traced or the entry has left the history."""
    for stream, offset in streams.items():
        try:
            before = offsets.preceding(offset)
        except FrameError:
            continue
        for entry in await history.read(stream, before, 1):
            if entry.offset == offset and entry.message.id == message_id:
                return entry.message.traceparent
    return ""


def trace_id(traceparent: str) -> str:
    """The trace id of a W3C ``traceparent`` (``00-<trace id>-<span id>-<flags>``), or ""."""
    parts = traceparent.split("-")
    if len(parts) == 4 and len(parts[1]) == 32 and parts[1].strip("0"):
        return parts[1]
    return ""
