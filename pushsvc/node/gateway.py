"""The node: its client listener, its sessions and the background work that keeps them honest.

Lifecycle: ``await node.start(listener)`` binds the client listener, ``listener`` making each
accepted connection's protocol (the HTTP edge, given where the node is assembled, which hands
upgraded connections to a :class:`~pushsvc.node.session.Session`), and joins the cluster: it
replaces whatever an earlier process of the same id left in the registry, registers and starts
the background tasks (fan-out, housekeeping, accounting, registry heartbeat). When the broker
cannot be reached, ``start()`` returns anyway and the node keeps trying to join with capped
backoff; until it has joined, the client listener refuses upgrades with 503 and ``ready`` is
False. ``await node.drain()`` stops accepting and closes every connection (sessions with 1001) so
clients resume elsewhere; ``await node.close()`` drains (if not done), cancels every task, flushes
the accounting and deregisters (when it had joined) and closes the client listener. Both are
idempotent, both work while the broker is down, and ``close()`` undoes only what ``start()`` did:
the broker belongs to whoever made it, who closes it after the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
import time
from collections.abc import Callable, Coroutine
from typing import Any, assert_never

from prometheus_client import Counter

from pushsvc import __version__
from pushsvc.auth import TokenIssuer
from pushsvc.broker.base import (
    Acked,
    Broker,
    Command,
    Expected,
    NodeInfo,
    Sent,
    SessionInfo,
    device_key,
)
from pushsvc.core import frames
from pushsvc.core import session as core
from pushsvc.core.acks import Deliveries
from pushsvc.core.backoff import backoff_delay
from pushsvc.core.clock import StreamClock
from pushsvc.core.flow import PendingPerAddress, slow_consumer
from pushsvc.core.index import SubscriberIndex
from pushsvc.core.session import Phase
from pushsvc.core.timers import Timers
from pushsvc.errors import AuthError, BrokerError, FrameError
from pushsvc.node import attach, collector
from pushsvc.node.accounting import Accounting
from pushsvc.node.catchup import CatchUp
from pushsvc.node.fanout import FanOut
from pushsvc.node.faults import Faults
from pushsvc.node.operations import Operations
from pushsvc.node.session import Connection, Session
from pushsvc.push.escalator import Escalator
from pushsvc.settings import Settings
from pushsvc.telemetry import metrics, tracing
from pushsvc.telemetry.logging import ContextAdapter
from pushsvc.types import Message

log = logging.getLogger(__name__)


STOP_TIMEOUT = 5.0  # seconds cancelled background tasks get to finish at shutdown
JOIN_BACKOFF = (0.1, 2.0)  # seconds: first and longest wait between two attempts to join
FREEZE_AFTER = 500  # sessions opened between two gc.freeze() calls


class Node:
    """One node. Construct, then ``await start()``; see the module docstring."""

    def __init__(self, settings: Settings, broker: Broker) -> None:
        self.settings = settings
        self.broker = broker
        self.id = settings.node_id
        self._loop: asyncio.AbstractEventLoop | None = None  # set by start()
        self.sessions: dict[str, Session] = {}  # by id, once a hello was accepted
        self.connections: set[Connection] = set()  # every open connection, upgraded or not
        self.upgraded: set[Session] = set()  # every WebSocket connection, hello or not
        # connections per source address before their hello (see pushsvc.http.client_listener)
        self.pending = PendingPerAddress(settings.max_pending_per_address)
        self.users: dict[str, int] = {}  # user -> open sessions here
        self.unfrozen = 0  # sessions opened since the last gc.freeze()
        self.index: SubscriberIndex[Session] = SubscriberIndex()
        self.clock = StreamClock()  # expiry in the streams' clock (the broker's), not ours
        self.acks = Deliveries(settings.ack_timeout, settings.max_attempts)
        self.timers = Timers(self.acks, settings.heartbeat)  # pings, token expiries, acks
        self.tokens = TokenIssuer.from_settings(settings)
        self.escalator = Escalator(broker, settings)
        self.accounting = Accounting(
            broker, self.id, settings.ledger_flush_interval, settle=self.escalator.settle
        )
        self.faults = Faults()  # game days only: see pushsvc.http.admin
        self.fanout = FanOut(
            self.id, self.index, self.clock, self.accounting, self.track, self.faults
        )
        self.catchup = CatchUp(
            self.id,
            broker,
            self.fanout,
            self.index,
            self.clock,
            self.faults,
            self.spawn,
            settings.history_size,
        )
        self.over_cap: set[Session] = set()
        self.leaving = False  # drain() was called
        self.joined = False  # registered in the cluster since start()
        self.started = 0.0
        self.client_addr = ""
        self.internal_addr = f"{settings.internal_host}:{settings.internal_port}"
        self.log = ContextAdapter(log, {"node": self.id})
        self.revocations: dict[str, int] = {}  # user -> not_before, from revoke commands
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self._all_closed = asyncio.Event()
        self.operations = Operations(
            self.id,
            broker,
            self.sessions,
            self.describe,
            self.faults,
            self.catchup.restart,
            token_max_ttl=settings.token_max_ttl,
            faults_enabled=settings.enable_fault_injection,
        )
        broker.bus.subscribe(self.catchup.envelope, self.command, self.catchup.resync)

    # -- lifecycle --------------------------------------------------------------------------

    async def start(
        self, listener: Callable[[], asyncio.Protocol], sock: socket.socket | None = None
    ) -> None:
        """Start the broker (a no-op when its owner already did), bind the client listener (or
        serve ``sock``) with ``listener`` as its protocol factory, then join the cluster, now or,
        while the broker is unreachable, in the background (see the module docstring).
        ``close()`` the node when done, even when this raised."""
        self._loop = asyncio.get_running_loop()
        await self.broker.start()
        s = self.settings
        if sock is not None:
            self._server = await self.loop.create_server(listener, sock=sock)
        else:
            self._server = await self.loop.create_server(
                listener, s.host, s.port, reuse_port=s.reuse_port, backlog=4096
            )
        bound = self._server.sockets[0].getsockname()
        self.client_addr = f"{bound[0]}:{bound[1]}"
        metrics.info.labels(self.id, __version__).set(1)
        metrics.broker_up.set(1 if self.broker.up else 0)
        metrics.watch_gc()
        collector.watch(self)
        tracing.configure(self.id)
        try:
            await self._join()
        except (BrokerError, OSError) as exc:
            self.log.warning(
                "broker unreachable, the node will keep trying to join",
                extra={"error": str(exc), "client": self.client_addr},
            )
            self.spawn(self._keep_joining(type(exc)))
        gc.collect()
        gc.freeze()
        self.log.info("node started", extra={"client": self.client_addr, "pid": os.getpid()})

    async def _join(self) -> None:
        """Replace this id's old registry entry, register, then start the background work.
        Raises :class:`BrokerError` (or OSError) when the broker fails."""
        # A node restarted under the same id must not bring back its dead sessions.
        await self.broker.registry.deregister(self.id)
        self.started = time.time()
        await self._register()
        self.joined = True
        for job in (
            self.fanout.run(),
            self._housekeeping(),
            self.accounting.run(),
            self._heartbeat(),
            self.escalator.run(),
        ):
            self.spawn(job)

    async def _keep_joining(self, failed: type[BaseException]) -> None:
        """Try to join until it works, with capped backoff: one log line for each new kind of
        failure, not one per attempt (the first was logged by :meth:`start`)."""
        attempt = 0
        since = time.monotonic()
        while not self.leaving:
            await asyncio.sleep(backoff_delay(attempt, *JOIN_BACKOFF))
            attempt += 1
            try:
                await self._join()
            except (BrokerError, OSError) as exc:
                if type(exc) is not failed:
                    failed = type(exc)
                    self.log.warning("still cannot join the cluster", extra={"error": str(exc)})
                continue
            waited = round(time.monotonic() - since, 3)
            self.log.info("joined the cluster", extra={"attempts": attempt, "waited": waited})
            return

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the node runs on: the one :meth:`start` ran on (before it, the running
        one; a node may be built outside any loop)."""
        return self._loop if self._loop is not None else asyncio.get_running_loop()

    @property
    def draining(self) -> bool:
        """True while the node turns new connections away: it is leaving (:meth:`drain` was
        called) or has not joined the cluster yet. Upgrades then get 503, a hello 1001."""
        return self.leaving or not self.joined

    async def drain(self) -> None:
        """Stop accepting; close every session with 1001 and wait for them (``drain_timeout``).
        Works while the broker is down: telling the registry is then skipped with a warning."""
        if self.leaving:
            return
        self.leaving = True
        if self._server is not None:
            self._server.close()
        # Every connection, not only the sessions: one that upgraded but has not said hello yet
        # would otherwise be welcomed after the drain and keep the node from stopping.
        for session in list(self.connections):
            session.close(1001, "node_draining", "node is shutting down, reconnect elsewhere")
        if self.joined:
            try:
                await self._register()
            except (BrokerError, OSError) as exc:
                self.log.warning("could not register as draining", extra={"error": str(exc)})
        if self.sessions:
            self._all_closed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_closed.wait(), self.settings.drain_timeout)
        self.log.info("node drained", extra={"left": len(self.sessions)})

    async def close(self) -> None:
        """Drain, stop the background work, flush and deregister (when joined), close the client
        listener. Idempotent; a node that was never started has nothing to close. The broker
        stays open: it is its owner's to close, after this."""
        if self._closed:
            return
        self._closed = True
        if self._server is None:
            return
        await self.drain()
        # Cancel until every task has stopped: on Python 3.11 a cancel that lands while a timed
        # await completes can be swallowed (asyncio.wait_for), and a loop would then run on.
        stuck = set(self._tasks)
        deadline = self.loop.time() + STOP_TIMEOUT
        while stuck and self.loop.time() < deadline:
            for task in stuck:
                task.cancel()
            _, stuck = await asyncio.wait(stuck, timeout=0.1)
        if stuck:  # never wait forever on shutdown; say which task did not stop
            where = [f"{t.get_coro()!r} at {t.get_stack(limit=4)}" for t in stuck]
            self.log.warning("tasks did not stop when cancelled", extra={"tasks": where})
        self.log.info("shutdown: background tasks stopped")
        await self.escalator.aclose()
        if self.joined:
            try:
                await self.accounting.flush()
                await self.broker.registry.deregister(self.id)
            except (BrokerError, OSError) as exc:  # the broker may be gone at shutdown
                self.log.warning("could not flush or deregister", extra={"error": str(exc)})
            else:
                self.log.info("shutdown: accounting flushed, deregistered")
        tracing.flush()
        for session in list(self.connections):
            session.abort()  # whatever did not finish its close handshake by now
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), 2.0)
        self.log.info("node stopped")

    def spawn(self, job: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``job`` as a tracked task: cancelled by :meth:`close`, its failure logged."""
        task = self.loop.create_task(job)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.error("background task failed", exc_info=task.exception())

    @property
    def ready(self) -> bool:
        return self._server is not None and not self.draining and self.broker.up

    # -- frames from sessions ---------------------------------------------------------------

    def frame_received(self, session: Session, frame: frames.ClientFrame) -> None:
        """Apply what the session's rules make of ``frame`` (:meth:`SessionCore.receive`)."""
        effect = session.core.receive(frame, time.monotonic())
        match effect:
            case None:
                pass
            case core.Write(payload):
                session.write(payload)
            case core.Close():
                apply_close(session, effect)
            case core.Admit(hello):
                attach.hello(self, session, hello)
            case core.Settle(ids):
                for done in self.acks.acked(session.id, session.core, ids, time.time()):
                    self.apply(session, done)
            case core.Forward(push):
                try:
                    self.escalator.frame(session, push)
                except FrameError as exc:
                    metrics.frames_rejected.labels(exc.slug).inc()
                    session.close(4003, exc.slug, str(exc))
            case core.Renew(token):
                self.spawn(self._renew(session, token))
            case _:
                assert_never(effect)

    async def _renew(self, session: Session, token: str) -> None:
        """A ``refresh``: verify the token, check its revocation, then apply :meth:`renew`."""
        try:
            claims = self.tokens.verify(token)
            refused = await self.revoked(claims.user, claims.issued)
        except AuthError as exc:
            session.close(exc.code, exc.slug, exc.message)
            return
        except (BrokerError, OSError) as exc:
            self.log.warning("refresh failed", extra={"session": session.id, "error": str(exc)})
            session.close(1011, "internal_error", "could not check the token, reconnect")
            return
        if refused:
            apply_close(session, core.TOKEN_REVOKED)
            return
        effect = self.timers.renew(session.id, session.user, claims.user, claims.expires)
        if isinstance(effect, core.Close):
            apply_close(session, effect)
        elif effect is not None:
            session.issued = claims.issued
            session.write(effect.payload)

    def session_accepted(self, session: Session) -> None:
        """``session``'s hello was accepted (its id, user and streams are set): count it, index
        its streams and note its token expiry. Live messages are offered to it from here on."""
        self.sessions[session.id] = session
        self.users[session.user] = self.users.get(session.user, 0) + 1
        self.unfrozen += 1
        self.index.add(session.id, session.streams, session)
        self.timers.accepted(session.id, session.core)
        metrics.connections.set(len(self.sessions))

    def session_opened(self, session: Session) -> None:
        """``session`` is live (welcome and replay written): heartbeats start, and its record
        goes to the registry."""
        self.timers.opened(session.id, time.monotonic())
        self.accounting.opened.append(self.describe(session))

    async def revoked(self, user: str, issued: int | None) -> bool:
        """Whether a token of ``user`` issued at ``issued`` is revoked: by the broker's record
        (a node that started after the revocation reads it there) or a command this node got.
        Raises :class:`BrokerError` when the broker cannot be read."""
        if core.revoked(issued, self.revocations.get(user)):
            return True
        return core.revoked(issued, await self.broker.registry.revoked(user))

    def keep(self, session: Session, message: Message, now: float) -> bool:
        """False when the drop fault swallows ``message`` (it is then owed, never written)."""
        if not (self.faults.drop_deliveries and self.faults.drops(message.id)):
            return True
        if message.ack:
            device = device_key(session.user, session.device)
            self.accounting.record(Expected(message.id, device, session.id, self.id, now))
        return False

    def track(
        self, session: Session, message: Message, frame: bytes, now: float, *, replay: bool
    ) -> None:
        """Owe an ack for ``message`` written to ``session`` and put the write in the trail."""
        attempt = self.acks.sent(session.id, message.id, frame, now)
        device = device_key(session.user, session.device)
        self.accounting.record(Sent(message.id, device, session.id, self.id, now, attempt))

    def apply(self, session: Session, effect: core.AckEffect) -> None:
        """Apply what ``session``'s acks and their timers make (:class:`Deliveries`): a
        write, a close, a trail event, a counter delta."""
        match effect:
            case core.Write(payload):
                session.write(payload)
            case core.Close():
                apply_close(session, effect)
            case core.TrailEvent(event, message_id, at, attempt):
                device = device_key(session.user, session.device)
                if event == "sent":
                    self.accounting.record(
                        Sent(message_id, device, session.id, self.id, at, attempt)
                    )
                    return
                self.accounting.record(Acked(message_id, device, session.id, self.id, at))
                if tracing.tracer is not None:
                    tracing.acked(self.id, session.id, (message_id,), time.time_ns())
                # ack latency needs the publish time: message ids start with it (publish.new_id)
                metrics.ack_latency.observe(max(0.0, at - int(message_id[:12], 16) / 1000))
            case core.Count():
                count(effect)
            case _:
                assert_never(effect)

    def session_closed(self, session: Session, code: int, phase: Phase) -> None:
        """Called by a session when its connection is gone."""
        self.over_cap.discard(session)
        if not session.id:  # never said a valid hello
            if code not in (4001, 4002, 4003, 4004):  # those were counted when decided
                metrics.connections_opened.labels("abandoned").inc()
            metrics.connections_closed.labels(metrics.close_code(code)).inc()
            return
        self.sessions.pop(session.id, None)
        left = self.users.get(session.user, 0) - 1
        if left > 0:
            self.users[session.user] = left
        else:
            self.users.pop(session.user, None)
        self.index.remove(session.id, session.streams)
        self.catchup.forget(session.streams)
        self.timers.closed(session.id)
        self.accounting.closed.append(session.id)
        self.escalator.session_ended(session.user, session.device, time.time())
        metrics.connections.set(len(self.sessions))
        metrics.connections_closed.labels(metrics.close_code(code)).inc()
        if not self.sessions:
            self._all_closed.set()
        duration = time.time() - session.connected_at
        metrics.connection_duration.observe(duration)
        self.log.info(
            "session closed",
            extra={
                "session": session.id, "user": session.user, "device": session.device,
                "code": code, "duration": round(duration, 3), "sent": session.core.sent,
                "acked": session.core.acked,
            },
        )  # fmt: skip

    # -- background work --------------------------------------------------------------------

    async def _housekeeping(self) -> None:
        s = self.settings
        interval = max(0.02, min(0.5, s.ack_timeout / 5, s.heartbeat / 5))
        while True:
            await asyncio.sleep(interval)
            self.tick(time.time(), time.monotonic())

    def tick(self, now: float, mono: float) -> None:
        """Apply what the session timers make (:meth:`Timers.tick`: redeliveries, 4011, 4001
        ``token_expired``, pings and 4009), then close slow sessions; after a connection ramp,
        move the new long-lived objects out of the collector's sight."""
        metrics.broker_up.set(1 if self.broker.up else 0)
        if self.unfrozen >= FREEZE_AFTER:
            # Full collections walk every object; with tens of thousands of sessions that is a
            # pause of hundreds of ms. Frozen objects are still freed by refcounting when their
            # session closes (session.connection_lost breaks its cycles).
            self.unfrozen = 0
            gc.freeze()
        for session_id, due in self.timers.tick(now, mono):
            if session_id is None:
                if isinstance(due, core.Count):
                    count(due)
            elif (session := self.sessions.get(session_id)) is not None:
                self.apply(session, due)
        for session in list(self.over_cap):
            if slow_consumer(
                session.outbox_bytes(), self.settings.outbox_cap, session.over_since(),
                self.settings.outbox_grace, mono,
            ):  # fmt: skip
                self.over_cap.discard(session)
                metrics.outbox_overflows.inc()
                apply_close(session, core.SLOW_CONSUMER)

    async def _heartbeat(self) -> None:
        """Register every ``registry_interval``. While it fails, one warning per kind of
        failure (not one per beat), and one line when it works again."""
        failing: type[BaseException] | None = None
        while True:
            await asyncio.sleep(self.settings.registry_interval)
            try:
                await self._register()
            except (BrokerError, OSError) as exc:
                if type(exc) is not failing:
                    failing = type(exc)
                    self.log.warning("registry heartbeat failed", extra={"error": str(exc)})
            else:
                if failing is not None:
                    failing = None
                    self.log.info("registry heartbeat works again")
            metrics.broker_up.set(1 if self.broker.up else 0)

    async def _register(self) -> None:
        users = len(self.users)
        info = NodeInfo(
            id=self.id, client_addr=self.client_addr, internal_addr=self.internal_addr,
            pid=os.getpid(), version=__version__, started=self.started, heartbeat=time.time(),
            state="draining" if self.leaving else "up", connections=len(self.sessions),
            users=users, broker_lag=self.fanout.lag,
        )  # fmt: skip
        await self.broker.registry.register(info, ttl=self.settings.registry_interval * 3)

    # -- operator commands ------------------------------------------------------------------

    def command(self, command: Command) -> None:
        """Bus callback for operator commands addressed to this node."""
        if command.node not in (self.id, "*"):
            return
        if command.kind == "close_session":
            session = self.sessions.get(command.session)
            if session is not None:
                session.close(
                    command.code, "closed_by_operator", command.reason or "closed by operator"
                )
        elif command.kind == "drain":
            self.spawn(self.drain())
        elif command.kind == "revoke_user":
            # older revocations lapse with the longest token lifetime, as in the broker
            oldest = time.time() - self.settings.token_max_ttl
            self.revocations = {u: t for u, t in self.revocations.items() if t > oldest}
            known = self.revocations.get(command.user, 0)
            self.revocations[command.user] = max(known, command.not_before)
            for session in [s for s in self.sessions.values() if s.user == command.user]:
                if core.revoked(session.issued, command.not_before):
                    apply_close(session, core.TOKEN_REVOKED)

    def describe(self, session: Session) -> SessionInfo:
        """The session's registry record, with its live counters."""
        return SessionInfo(
            id=session.id, node=self.id, user=session.user, device=session.device,
            remote=session.remote, connected_at=session.connected_at, topics=list(session.topics),
            sent=session.core.sent, acked=session.core.acked,
            pending=self.acks.pending(session.id), outbox_bytes=session.outbox_bytes(),
            last_ack=session.core.last_ack, rtt=session.core.rtt,
        )  # fmt: skip


def apply_close(session: Session, close: core.Close) -> None:
    """Apply the counter deltas ``close`` carries, then close ``session`` with it."""
    for delta in close.counts:
        count(delta)
    session.close(close.code, close.slug, close.message)


COUNTERS: dict[core.CounterName, Counter] = {
    "acked": metrics.acked,
    "redeliveries": metrics.redeliveries,
    "frames_rejected": metrics.frames_rejected,
}


def count(delta: core.Count) -> None:
    """Apply a counter delta of the session rules to its prometheus counter."""
    counter = COUNTERS[delta.name]
    (counter.labels(*delta.labels) if delta.labels else counter).inc(delta.n)
