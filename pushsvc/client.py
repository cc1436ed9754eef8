"""Asyncio client for the pushsvc WebSocket protocol (docs/protocol.md).

    async with PushClient("wss://push.example/ws", token, device="phone-1") as client:
        async for msg in client:
            show(msg.event, msg.data)

The client sends ``hello`` with the last offset it handed out per stream, yields each message id
once (a bounded window of recent ids), acks ``ack: true`` messages once they have been handed to
the application (batched: every ``ack_interval`` or per 100 ids), answers server pings, and after
a lost connection reconnects with exponential backoff and full jitter, resuming where it stopped.
Close codes 4001, 4002 and 4010 end it for good; every other end of a connection is retried.
With a token provider (an async callable), the client refreshes the session's token before it
expires (:func:`refresh_delay`: 60 s before ``exp``, or at 80% of a shorter lifetime) by sending
``refresh`` with the provider's next token; a session closed with 4001 ``token_expired`` after it
was open is reconnected with a new token from the provider (an expiry refused at ``hello`` ends the
client: it never loops with a stale token).

Exceptions::

    ClientError                 root of everything raised here
    ├── ClientClosed            start(), receive(), wait_open(), ack() or ping() after close()
    ├── NotConnected            ping() while no connection is open
    └── ConnectionEnded         the client stopped for good (.code, .reason, .error)
        ├── Unauthorized        4001: bad or expired token
        ├── ClosedByOperator    4010: session closed through DELETE /v1/sessions/{id}
        └── ConnectionLost      any other end, with reconnect=False or max_reconnects used up

4002 (no hello in time) ends the client as a plain ``ConnectionEnded``.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, NamedTuple, Self, assert_never

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.uri import parse_uri

from pushsvc.core.backoff import backoff_delay
from pushsvc.core.client_state import (
    DedupeWindow,
    StreamOffsets,
    resume_for,
)

logger = logging.getLogger(__name__)

#: Close codes after which the client must not reconnect with the same token.
TERMINAL_CLOSE_CODES = frozenset({4001, 4002, 4010})
#: Local stand-in for "connection lost without a close frame" (network error, silent server).
ABNORMAL_CLOSURE = 1006


# --- wire frames ------------------------------------------------------------------------------


class Message(msgspec.Struct, frozen=True, tag="msg", tag_field="type"):
    """One delivered message, exactly as the server sent it."""

    id: str
    stream: str
    offset: str
    event: str
    data: Any = None
    ts: int = 0  # unix ms when published
    ack: bool = False  # the server expects an ack for this id
    replay: bool = False  # sent from history during resume, not live


class Welcome(msgspec.Struct, frozen=True, tag="welcome", tag_field="type"):
    """The server's answer to ``hello``."""

    session: str
    node: str
    user: str = ""
    heartbeat: float = 0.0
    replayed: int = 0


class ServerError(msgspec.Struct, frozen=True, tag="error", tag_field="type"):
    """An ``error`` frame; the server sends one before closing for a reason it can name."""

    code: str
    message: str = ""


class _Ping(msgspec.Struct, frozen=True, tag="ping", tag_field="type"):
    pass


class _Pong(msgspec.Struct, frozen=True, tag="pong", tag_field="type"):
    pass


class _Refreshed(msgspec.Struct, frozen=True, tag="refreshed", tag_field="type"):
    exp: int


class _Refresh(msgspec.Struct, frozen=True, tag="refresh", tag_field="type"):
    token: str


class _Hello(msgspec.Struct, frozen=True, tag="hello", tag_field="type"):
    token: str
    device: str
    resume: dict[str, str]


class _Ack(msgspec.Struct, frozen=True, tag="ack", tag_field="type"):
    ids: list[str]


_decoder = msgspec.json.Decoder(Message | Welcome | ServerError | _Ping | _Pong | _Refreshed)
_encoder = msgspec.json.Encoder()
_PING = _encoder.encode(_Ping()).decode()
_PONG = _encoder.encode(_Pong()).decode()


def _encode(frame: msgspec.Struct) -> str:
    return _encoder.encode(frame).decode()  # text frames, as the protocol requires


class _Times(msgspec.Struct):
    exp: float | None = None
    iat: float | None = None


_times = msgspec.json.Decoder(_Times)


def token_times(token: str) -> tuple[float | None, float | None]:
    """A JWT's ``(iat, exp)``, read without verifying it (the server verifies); Nones when the
    token is not a JWT or lacks them."""
    try:
        payload = token.split(".")[1]
        times = _times.decode(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, msgspec.DecodeError):
        return None, None
    return times.iat, times.exp


def refresh_delay(now: float, iat: float | None, exp: float) -> float:
    """Seconds from ``now`` until a token issued at ``iat`` (``now`` when unknown) and expiring
    at ``exp`` is refreshed: 60 s before ``exp``, or at 80% of a lifetime shorter than 300 s."""
    lifetime = exp - (now if iat is None else iat)
    return max(0.0, exp - min(60.0, 0.2 * lifetime) - now)


# --- errors -------------------------------------------------------------------------------------


class ClientError(Exception):
    """Root of the client's exceptions."""


class ClientClosed(ClientError):
    """The client was closed locally with ``close()``."""


class NotConnected(ClientError):
    """The operation needs an open connection and there is none right now."""


class ConnectionEnded(ClientError):
    """The client stopped for good. ``error`` is the server's last ``error`` frame, if any."""

    def __init__(self, code: int, reason: str, error: ServerError | None = None) -> None:
        super().__init__(
            f"connection ended with {code} {reason!r}" + (f" ({error.code})" if error else "")
        )
        self.code = code
        self.reason = reason
        self.error = error


class Unauthorized(ConnectionEnded):
    """4001: the token is bad or expired; connect again with a new one."""


class ClosedByOperator(ConnectionEnded):
    """4010: an operator closed the session."""


class ConnectionLost(ConnectionEnded):
    """The connection dropped and reconnecting is disabled or gave up."""


def ending_for(
    code: int, reason: str, error: ServerError | None, *, terminal: bool
) -> ConnectionEnded:
    """The exception that ends the client after a close with ``code``.

    ``terminal`` is False when the code allowed a reconnect that the client will not make.
    """
    if not terminal:
        return ConnectionLost(code, reason, error)
    cls = {4001: Unauthorized, 4010: ClosedByOperator}.get(code, ConnectionEnded)
    return cls(code, reason, error)


# --- the client ---------------------------------------------------------------------------------


class State(enum.StrEnum):
    CONNECTING = "connecting"  # first attempt
    OPEN = "open"  # welcome received
    RECONNECTING = "reconnecting"  # after a failed attempt or a lost connection
    CLOSED = "closed"  # not started, closed locally, or ended (see PushClient.failure)


TokenSource = str | Callable[[], Awaitable[str]]


class _Outcome(NamedTuple):
    code: int
    reason: str


class _End:
    """Queue sentinel: wakes a waiting consumer when the client closes or ends."""


_END = _End()


class PushClient:
    """One device's connection to the gateway; see the module docstring.

    Contract: ``start()`` (or ``async with``) before iterating, exactly one consumer iterates, and
    ``close()`` (or leaving ``async with``) releases the connection and every task. ``token`` is
    either a string or an async callable called before each connection attempt (to refresh it).
    With ``auto_ack`` a message is acked when the iterator hands it to you; otherwise you must
    ``await ack([...])`` each ``msg.ack`` message or the server redelivers it and finally closes
    the session with 4011. ``offsets`` covers the messages handed to you, so passing it as
    ``resume`` to a later client continues after the last one you saw.
    """

    def __init__(
        self,
        url: str,
        token: TokenSource,
        device: str,
        *,
        resume: Mapping[str, str] | None = None,
        auto_ack: bool = True,
        ack_interval: float = 0.05,
        ack_batch: int = 100,
        reconnect: bool = True,
        max_reconnects: int | None = None,
        backoff_base: float = 0.2,
        backoff_cap: float = 10.0,
        open_timeout: float = 10.0,
        max_queue: int = 1000,
        dedupe_window: int = 10_000,
        on_state: Callable[[State], None] | None = None,
    ) -> None:
        try:
            parse_uri(url)
        except InvalidURI as exc:
            raise ValueError(f"not a WebSocket URL: {url!r}") from exc
        if not device:
            raise ValueError("device must be a non-empty, stable id")
        self._url, self._token, self._device = url, token, device
        self._auto_ack, self._ack_interval, self._ack_batch = auto_ack, ack_interval, ack_batch
        self._reconnect, self._max_reconnects = reconnect, max_reconnects
        self._backoff = (backoff_base, backoff_cap)
        self._open_timeout = open_timeout
        self._on_state = on_state
        self._offsets = StreamOffsets(resume)
        self._seen = DedupeWindow(dedupe_window)
        self._queue: asyncio.Queue[Message | _End] = asyncio.Queue(max_queue)
        self._pending_acks: list[str] = []
        self._ack_ready = asyncio.Event()  # some acks are pending and a connection is open
        self._ack_full = asyncio.Event()  # a whole batch is pending: flush without waiting
        self._pongs: collections.deque[asyncio.Future[None]] = collections.deque()
        self._state_changed = asyncio.Event()  # replaced on every change; waiters re-check
        self._ws: ClientConnection | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._closed = asyncio.Event()
        self.state = State.CLOSED
        self.welcome: Welcome | None = None  # from the current or last connection
        self.last_error: ServerError | None = None
        self.last_close: tuple[int, str] | None = None  # code and reason of the last connection
        self.connections = 0  # welcomes received so far
        self.failure: ConnectionEnded | None = None  # why the client ended, once it has
        self.duplicates = 0  # messages received again and not yielded
        self._skip_backoff = False
        self._expired = False  # the last connection ended with 4001 token_expired
        self._refreshing: tuple[float | None, float | None] = (None, None)  # the sent refresh's
        self._refresher: asyncio.Task[None] | None = None  # sends the next refresh

    # --- read-only views

    @property
    def offsets(self) -> dict[str, str]:
        """Per stream, the highest offset handed to the application (a copy)."""
        return self._offsets.snapshot()

    @property
    def session(self) -> str | None:
        return self.welcome.session if self.welcome else None

    @property
    def node(self) -> str | None:
        return self.welcome.node if self.welcome else None

    # --- lifecycle

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Start connecting in the background; idempotent. Raises ClientClosed after close()."""
        if self._closing:
            raise ClientClosed("client was closed")
        if self._tasks:
            return
        self._tasks = [
            asyncio.create_task(self._run(), name=f"pushsvc-client-{self._device}"),
            asyncio.create_task(self._flush_loop(), name=f"pushsvc-client-acks-{self._device}"),
        ]

    async def close(self) -> None:
        """Flush pending acks (briefly), close the connection with 1000 and cancel every task.

        Idempotent; a second call waits for the first. Messages still queued are dropped unacked
        (the server delivers them again).
        """
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    while await self._flush_acks():
                        pass
        finally:
            for task in self._tasks:
                task.cancel()
            if self._tasks:
                await asyncio.wait(self._tasks)
            self._fail_pongs()
            self._set_state(State.CLOSED)
            self._wake_consumer()
            self._closed.set()

    # ASYNC109 is silenced on wait_open/receive/ping: a per-call timeout is what they offer.
    async def wait_open(self, timeout: float | None = None) -> Welcome:  # noqa: ASYNC109
        """Wait until a connection is open and return its welcome.

        Raises the client's ``failure`` if it ended, ClientClosed after close(), TimeoutError.
        """
        async with asyncio.timeout(timeout):
            while True:
                if self.state is State.OPEN and self.welcome is not None:
                    return self.welcome
                if self._closing:
                    raise ClientClosed("client was closed")
                if self.failure is not None:
                    raise self.failure
                await self._state_changed.wait()

    # --- consuming

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Message:
        """The next message. Stops after close(); raises ``failure`` once the client ended."""
        while True:
            if self._closing:
                raise StopAsyncIteration
            if not self._tasks:
                raise ClientError("start the client (or use `async with`) before iterating")
            if self.failure is not None and self._queue.empty():
                raise self.failure
            item = await self._queue.get()
            if isinstance(item, Message):
                self._hand_over(item)
                return item

    async def receive(self, timeout: float | None = None) -> Message:  # noqa: ASYNC109
        """Like ``anext(client)`` with a timeout; ClientClosed instead of StopAsyncIteration."""
        async with asyncio.timeout(timeout):
            try:
                return await self.__anext__()
            except StopAsyncIteration:
                raise ClientClosed("client was closed") from None

    async def ack(self, ids: Iterable[str]) -> None:
        """Ack ``ids``: they join the next batch (sent within ``ack_interval``, or at once when 100
        are queued) on the open connection, or on the next one when none is open.

        Batching keeps a consumer that acks one message at a time under the node's frame rate.
        """
        if self._closing:
            raise ClientClosed("client was closed")
        for msg_id in ids:
            self._seen.mark_acked(msg_id)
            self._queue_ack(msg_id)

    async def ping(self, timeout: float = 5.0) -> float:  # noqa: ASYNC109
        """Send an application ping; return the round trip in seconds once the pong arrives.

        Raises NotConnected when no connection is open or it closes first, TimeoutError.
        """
        if self._closing:
            raise ClientClosed("client was closed")
        ws = self._ws
        if ws is None:
            raise NotConnected("no open connection")
        loop = asyncio.get_running_loop()
        pong: asyncio.Future[None] = loop.create_future()
        self._pongs.append(pong)
        started = loop.time()
        try:
            await ws.send(_PING)
            async with asyncio.timeout(timeout):
                await pong
        except ConnectionClosed as exc:
            raise NotConnected("connection closed during ping") from exc
        finally:
            with contextlib.suppress(ValueError):
                self._pongs.remove(pong)
        return loop.time() - started

    async def reconnect_now(self) -> None:
        """Flush acks, close the open connection with 1000 and connect again at once, resuming.

        For a device that changed networks. A no-op while no connection is open.
        """
        if self._ws is None:
            return
        while await self._flush_acks():
            pass
        if (ws := self._ws) is not None:
            self._skip_backoff = True
            await ws.close(1000, "client reconnects")

    # --- internals: hand-over and acks

    def _hand_over(self, msg: Message) -> None:
        self._offsets.observe(msg.stream, msg.offset)
        if self._auto_ack and msg.ack:
            self._seen.mark_acked(msg.id)
            self._queue_ack(msg.id)

    def _queue_ack(self, msg_id: str) -> None:
        self._pending_acks.append(msg_id)
        if self._ws is not None:
            self._ack_ready.set()
            if len(self._pending_acks) >= self._ack_batch:
                self._ack_full.set()

    async def _flush_loop(self) -> None:
        while True:
            await self._ack_ready.wait()
            if len(self._pending_acks) < self._ack_batch:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._ack_interval):
                        await self._ack_full.wait()
            await self._flush_acks()

    async def _flush_acks(self) -> bool:
        """Send one batch; False when nothing was sent (nothing pending or no connection)."""
        ws = self._ws
        batch = self._pending_acks[: self._ack_batch]
        if ws is None or not batch:
            self._ack_ready.clear()
            self._ack_full.clear()
            return False
        del self._pending_acks[: len(batch)]
        if not self._pending_acks:
            self._ack_ready.clear()
        if len(self._pending_acks) < self._ack_batch:
            self._ack_full.clear()
        try:
            await ws.send(_encode(_Ack(ids=batch)))
        except ConnectionClosed:
            self._pending_acks[:0] = batch  # the next connection sends them
            self._ack_ready.clear()
            self._ack_full.clear()
            return False
        return True

    # --- internals: connections

    async def _run(self) -> None:
        attempt = 0
        try:
            while True:
                self._set_state(
                    State.CONNECTING if attempt == 0 and not self.last_close else State.RECONNECTING
                )
                before = self.connections
                outcome = await self._connect_once()
                self.last_close = (outcome.code, outcome.reason)
                if self.connections > before:
                    attempt = 0
                if self._expired and self.connections > before and callable(self._token):
                    # the session lived and its token ran out: a new one from the provider
                    self._skip_backoff = True
                    continue
                if outcome.code in TERMINAL_CLOSE_CODES:
                    self._finish(ending_for(*outcome, self.last_error, terminal=True))
                    return
                if not self._reconnect or (
                    self._max_reconnects is not None and attempt >= self._max_reconnects
                ):
                    self._finish(ending_for(*outcome, self.last_error, terminal=False))
                    return
                self._set_state(State.RECONNECTING)
                if self._skip_backoff:
                    self._skip_backoff = False
                else:
                    await asyncio.sleep(backoff_delay(attempt, *self._backoff))
                    attempt += 1
        except Exception as exc:
            logger.exception("push client stopped on an unexpected error")
            self._finish(ConnectionLost(ABNORMAL_CLOSURE, f"client error: {exc!r}"))

    async def _connect_once(self) -> _Outcome:
        try:
            token = self._token if isinstance(self._token, str) else await self._token()
        except Exception as exc:  # noqa: BLE001 - the caller's provider: any failure is retried
            # one line, not a traceback: a node restarting makes this routine
            logger.warning("token provider failed (%r); retrying with backoff", exc)
            return _Outcome(ABNORMAL_CLOSURE, f"token provider failed: {exc!r}")
        try:
            ws = await connect(
                self._url,
                compression=None,
                open_timeout=self._open_timeout,
                ping_interval=None,  # the server pings at the application level
                close_timeout=2.0,
            )
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            return _Outcome(ABNORMAL_CLOSURE, f"{type(exc).__name__}: {exc}")
        try:
            return await self._converse(ws, token)
        except ConnectionClosed as exc:
            if exc.rcvd is None:
                return _Outcome(ABNORMAL_CLOSURE, "connection closed without a close frame")
            return _Outcome(exc.rcvd.code, exc.rcvd.reason)
        finally:
            await ws.close()  # 1000, also when close() cancelled this task

    async def _converse(self, ws: ClientConnection, token: str) -> _Outcome:
        """Say hello, then read frames until the connection ends (raises ConnectionClosed)."""
        self._expired = False
        await ws.send(
            _encode(_Hello(token=token, device=self._device, resume=resume_for(self.offsets)))
        )
        loop = asyncio.get_running_loop()
        idle = self._open_timeout  # until the welcome; then derived from the heartbeat
        try:
            async with asyncio.timeout_at(loop.time() + idle) as deadline:
                while True:
                    raw = await ws.recv()
                    try:
                        frame = _decoder.decode(raw)
                    except msgspec.DecodeError as exc:
                        logger.debug("ignoring a frame the client does not understand: %s", exc)
                        continue
                    match frame:
                        case Message() if frame.id in self._seen:
                            self.duplicates += 1
                            if frame.ack and self._seen.is_acked(frame.id):
                                self._queue_ack(frame.id)  # the server may have lost the first
                        case Message():
                            if self._queue.full():
                                deadline.reschedule(None)  # a slow consumer is no silent server
                                await self._queue.put(frame)
                            else:
                                self._queue.put_nowait(frame)
                            self._seen.add(frame.id)
                        case _Ping():
                            await ws.send(_PONG)
                        case _Pong():
                            self._resolve_pong()
                        case Welcome():
                            self._opened(ws, frame)
                            idle = max(frame.heartbeat * 2.5, 1.0) if frame.heartbeat > 0 else 0.0
                            self._refresh_later(ws, *token_times(token))
                        case _Refreshed():
                            self._refresh_later(ws, *self._refreshing)
                        case ServerError():
                            self.last_error = frame
                            self._expired = frame.code == "token_expired"
                            logger.info("server error %s: %s", frame.code, frame.message)
                        case _:
                            assert_never(frame)
                    deadline.reschedule(loop.time() + idle if idle else None)
        except TimeoutError:
            return _Outcome(ABNORMAL_CLOSURE, f"no frame from the server for {idle:g}s")
        finally:
            self._refresh_later(None, None, None)
            self._closed_connection(ws)

    def _refresh_later(
        self, ws: ClientConnection | None, iat: float | None, exp: float | None
    ) -> None:
        """Replace the refresh task: with a token provider and a token whose ``exp`` is known,
        send ``refresh`` with the provider's next token before it expires
        (:func:`refresh_delay`); with ``ws`` None, only cancel it."""
        if self._refresher is not None:
            self._refresher.cancel()
            self._refresher = None
        provider = self._token
        if ws is None or isinstance(provider, str) or exp is None:
            return
        delay = refresh_delay(time.time(), iat, exp)
        self._refresher = asyncio.create_task(self._refresh(ws, provider, delay))

    async def _refresh(
        self, ws: ClientConnection, provider: Callable[[], Awaitable[str]], delay: float
    ) -> None:
        await asyncio.sleep(delay)
        try:
            token = await provider()
        except Exception as exc:  # noqa: BLE001 - the caller's provider: the session expires
            logger.warning("token provider failed (%r); the session ends when it expires", exc)
            return
        self._refreshing = token_times(token)
        with contextlib.suppress(ConnectionClosed):
            await ws.send(_encode(_Refresh(token=token)))

    def _opened(self, ws: ClientConnection, welcome: Welcome) -> None:
        self._ws, self.welcome = ws, welcome
        self.connections += 1
        self._set_state(State.OPEN)
        logger.info("push connection open: session %s on node %s", welcome.session, welcome.node)
        if self._pending_acks:
            self._ack_ready.set()

    def _closed_connection(self, ws: ClientConnection) -> None:
        if self._ws is ws:
            self._ws = None
            logger.info("push connection closed: %s %s", ws.close_code, ws.close_reason or "")
        self._fail_pongs()

    def _resolve_pong(self) -> None:
        while self._pongs:
            pong = self._pongs.popleft()
            if not pong.done():
                pong.set_result(None)
                return

    def _fail_pongs(self) -> None:
        while self._pongs:
            pong = self._pongs.popleft()
            if not pong.done():
                pong.set_exception(NotConnected("connection closed before the pong"))

    def _set_state(self, state: State) -> None:
        if state is self.state:
            return
        self.state = state
        self._state_changed.set()
        self._state_changed = asyncio.Event()
        if self._on_state is not None:
            self._on_state(state)

    def _finish(self, failure: ConnectionEnded) -> None:
        self.failure = failure
        logger.info("push client ended: %s", failure)
        self._set_state(State.CLOSED)
        self._wake_consumer()

    def _wake_consumer(self) -> None:
        # A consumer only waits on an empty queue, so a full queue means nobody is waiting.
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(_END)
