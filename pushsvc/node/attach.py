"""A session's arrival: hello, then what it missed, then live (DESIGN §4, §5).

:func:`hello` verifies the token and the resume offsets, registers the session (live messages are
buffered from here on) and starts :func:`replay`, which follows the session's streams on the bus
(confirmed before anything is read, so nothing falls between history and live), reads history,
writes the welcome and the replayed messages, flushes the buffer without duplicates and switches
the session to live.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Protocol

from pushsvc.broker.base import Expired, SentCount, device_key
from pushsvc.core import frames, offsets
from pushsvc.core import replay as replay_rules
from pushsvc.core import session as core
from pushsvc.core.clock import expired
from pushsvc.core.session import Phase
from pushsvc.core.streams import is_user_stream, subscriptions
from pushsvc.errors import AuthError, BrokerError, FrameError
from pushsvc.node.session import Session
from pushsvc.telemetry import metrics, tracing
from pushsvc.types import HistoryEntry

if TYPE_CHECKING:
    import asyncio

    from pushsvc.auth import TokenIssuer
    from pushsvc.broker.base import Broker
    from pushsvc.core.clock import StreamClock
    from pushsvc.node.accounting import Accounting
    from pushsvc.node.catchup import CatchUp
    from pushsvc.settings import Settings
    from pushsvc.telemetry.logging import ContextAdapter
    from pushsvc.types import Message


class Host(Protocol):
    """What an arriving session needs of its node (``Node`` is one): who it is, how tokens are
    checked, where history and acks are read, and where the session is counted once accepted
    and once opened."""

    @property
    def id(self) -> str: ...
    @property
    def settings(self) -> Settings: ...
    @property
    def tokens(self) -> TokenIssuer: ...
    @property
    def broker(self) -> Broker: ...  # its history and ledger are read
    @property
    def clock(self) -> StreamClock: ...
    @property
    def catchup(self) -> CatchUp: ...
    @property
    def accounting(self) -> Accounting: ...
    @property
    def log(self) -> ContextAdapter: ...
    @property
    def draining(self) -> bool: ...

    def spawn(self, job: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]: ...

    async def revoked(self, user: str, issued: int | None) -> bool: ...

    def keep(self, session: Session, message: Message, now: float) -> bool: ...

    def track(
        self, session: Session, message: Message, frame: bytes, now: float, *, replay: bool
    ) -> None: ...

    def session_accepted(self, session: Session) -> None: ...

    def session_opened(self, session: Session) -> None: ...


def hello(node: Host, session: Session, hello: frames.Hello) -> None:
    """Verify the hello; on success register the session and start its replay."""
    if node.draining:
        d = core.DRAINING
        session.close(d.code, d.slug, d.message)
        return
    try:
        claims = node.tokens.verify(hello.token)
        streams = subscriptions(claims.user, claims.topics)
        resume = core.check_hello(hello, streams)
    except AuthError as exc:
        metrics.connections_opened.labels("unauthorized").inc()
        session.close(exc.code, exc.slug, exc.message)
        return
    except FrameError as exc:
        metrics.connections_opened.labels("protocol_error").inc()
        session.close(exc.code, exc.slug, exc.message)
        return
    session.id = secrets.token_hex(8)
    session.user = claims.user
    session.device = hello.device or session.id
    session.topics = claims.topics
    session.streams = streams
    session.issued = claims.issued
    session.core.accept(claims.expires)
    session.hello_accepted()
    node.session_accepted(session)
    node.spawn(replay(node, session, resume.offsets, resume.positions))


async def replay(
    node: Host, session: Session, wanted: dict[str, str], positions: dict[str, offsets.Position]
) -> None:
    """Check the token against its user's revocation, send the welcome and what the session
    missed, then switch it to live. (A revocation that lands during the replay closes the session
    by its command: the session is in ``node.sessions`` from the hello on.)"""
    try:
        if await node.revoked(session.user, session.issued):
            metrics.connections_opened.labels("unauthorized").inc()
            t = core.TOKEN_REVOKED
            session.close(t.code, t.slug, t.message)
            return
        # Live first, then history: whatever is appended after the history read arrives live.
        await node.broker.bus.follow(session.streams)
        chosen = await missed(node, session, wanted, positions)
    except (BrokerError, OSError) as exc:
        node.log.warning("replay failed", extra={"session": session.id, "error": str(exc)})
        session.close(1011, "internal_error", "could not read history, reconnect")
        return
    if session.core.phase != Phase.REPLAY:
        return
    s = node.settings
    session.write(
        frames.ws_text_frame(
            frames.encode_welcome(session.id, node.id, session.user, s.heartbeat, len(chosen))
        )
    )
    now = time.time()
    written: list[tuple[str, offsets.Position]] = []
    for stream, entry in [c for c in chosen if node.keep(session, c[1].message, now)]:
        m = entry.message
        frame = frames.ws_text_frame(
            frames.encode_msg(m.id, stream, entry.offset, m.event, m.data, m.ts, m.ack, True)
        )
        session.write(frame)
        written.append((stream, offsets.parse(entry.offset)))
        if m.ack:
            node.track(session, m, frame, now, replay=True)
        else:
            node.accounting.record(SentCount(m.id, node.id, 1))
    if chosen:
        metrics.replayed.inc(len(chosen))
        metrics.ack_requested.inc(sum(1 for _, e in chosen if e.message.ack))
        if tracing.tracer is not None:
            tracing.replayed(node.id, [(stream, e.message) for stream, e in chosen])
        metrics.sent.inc(len(chosen))
    buffered = session.core.replayed(positions, written)
    for stream, position, message, frame in [b for b in buffered if node.keep(session, b[2], now)]:
        if session.offer(stream, position, message, frame) and message.ack:
            node.track(session, message, frame, now, replay=False)
    node.session_opened(session)
    metrics.connections_opened.labels("ok").inc()
    node.log.info(
        "session opened",
        extra={
            "session": session.id, "user": session.user, "device": session.device,
            "remote": session.remote, "replayed": len(chosen),
        },
    )  # fmt: skip


async def missed(
    node: Host, session: Session, wanted: dict[str, str], positions: dict[str, offsets.Position]
) -> list[tuple[str, HistoryEntry]]:
    """Read what ``session`` missed, per stream; clamp ``positions`` to the streams' ends."""
    now_ms = node.clock.now(int(time.time() * 1000))
    chosen: list[tuple[str, HistoryEntry]] = []
    history = node.broker.history
    catchup = node.catchup
    for stream in session.streams:
        since = wanted.get(stream)
        if since is None and not is_user_stream(stream):
            if not catchup.knows(stream):  # the first session here to read it
                catchup.start(stream, await history.last_offset(stream))
            continue
        after = None if is_user_stream(stream) else since
        entries = await history.read(stream, after, node.settings.history_size)
        end = entries[-1].offset if entries else None
        if since is not None:
            end = await clamp(node, stream, entries, positions)
        if not catchup.knows(stream):
            catchup.start(stream, end)
        owed = [e.message.id for e in entries if e.message.ack]
        acked: set[str] = set()
        if owed:
            await node.accounting.flush()  # acks this node holds must count too
            acked = await node.broker.ledger.acked_ids(
                device_key(session.user, session.device), owed
            )
        picked = select(node, session, stream, entries, since, acked, now_ms)
        chosen.extend((stream, e) for e in picked)
    return chosen


async def clamp(
    node: Host, stream: str, entries: list[HistoryEntry], positions: dict[str, offsets.Position]
) -> str | None:
    """Clamp the resume position of ``stream`` to the stream's end (:func:`offsets.clamp`), so a
    resume beyond it does not make the session drop later messages as already seen; return the
    newest offset known of the stream (None: it is empty)."""
    wanted = positions[stream]
    if entries and offsets.parse(entries[-1].offset) >= wanted:
        return entries[-1].offset  # what was read reaches the resume position: within the stream
    end = await node.broker.history.last_offset(stream)
    positions[stream] = offsets.clamp(wanted, None if end is None else offsets.parse(end))
    return end


def select(
    node: Host,
    session: Session,
    stream: str,
    entries: list[HistoryEntry],
    since: str | None,
    acked: set[str],
    now_ms: int,
) -> list[HistoryEntry]:
    """What to replay of ``stream`` (:func:`replay.select`); counts the inbox entries this
    device came back too late for as expired (docs/monitoring.md)."""
    if is_user_stream(stream):
        device = device_key(session.user, session.device)
        for e in entries:
            m = e.message
            if m.ack and m.id not in acked and expired(m, offsets.parse(e.offset), now_ms):
                node.accounting.record(Expired(m.id, device, node.id))
    return replay_rules.select(stream, entries, since, acked.__contains__, now_ms)
