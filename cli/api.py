"""A typed client of the internal API (docs/api.md) for the operator commands, and their errors.

Every call either returns a decoded record or raises one of::

    OperatorError               something the operator has to hear about, in one line
    ├── Unreachable             Redis, a node or Alertmanager did not answer (exit 1)
    ├── Refused                 the API answered with an error: ``status``, ``code`` (exit 1 or 2)
    └── UsageError              the command line or the settings cannot work (exit 2)

:func:`cli.cluster.run` turns them into an ``error:`` line and the exit code; no command shows a
traceback for them. Use as ``async with Api(url, key) as api: ...``.
"""

from __future__ import annotations

import ssl
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import msgspec

from pushsvc.broker.base import NodeInfo, SessionInfo
from pushsvc.records import (
    ErrorAnswer,
    HeldSession,
    LocalSessionList,
    MessageTrace,
    MessageTrail,
    NodeDraining,
    NodeList,
    PublishResult,
    SessionClosing,
    SessionList,
    UserRevoked,
    UserSessionsClosing,
    WebhookStatus,
)

T = TypeVar("T")


class OperatorError(Exception):
    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Unreachable(OperatorError):
    """``what`` (e.g. "the API at http://…") could not be reached."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"cannot reach {what}: {reason}")
        self.what = what
        self.reason = reason


class Refused(OperatorError):
    """The API answered ``status`` with error ``code``. Bad input and a wrong key are usage
    errors (exit 2); "not found" and an unhealthy cluster exit 1."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.exit_code = 2 if status in (400, 401, 403, 413, 422) else 1


class UsageError(OperatorError):
    exit_code = 2


def base_url(address: str, scheme: str = "http") -> str:
    """``address`` as a URL: ``host:port`` gets ``scheme://``; no trailing slash."""
    url = address if "://" in address else f"{scheme}://{address}"
    return url.rstrip("/")


class Api:
    """The internal API of one node at ``url`` with API key ``key``; ``timeout`` per request.

    A bare ``host:port`` is reached with ``scheme``; ``tls`` is the context for ``https`` (from
    :meth:`pushsvc.settings.Settings.client_tls`; else the system's CAs)."""

    def __init__(
        self,
        url: str,
        key: str,
        timeout: float = 5.0,
        *,
        scheme: str = "http",
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.url = base_url(url, scheme)
        self._key = key
        self._timeout = timeout
        self._tls = tls
        self._http: httpx.AsyncClient | None = None

    async def __aenter__(self) -> Api:
        try:
            self._http = httpx.AsyncClient(
                base_url=self.url,
                headers={"Authorization": f"Bearer {self._key}"},
                timeout=self._timeout,
                verify=self._tls if self._tls is not None else True,
            )
        except (httpx.InvalidURL, ValueError) as exc:
            raise UsageError(f"invalid API URL {self.url!r}: {exc}") from None
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._http is not None:
            await self._http.aclose()

    # -- calls ---------------------------------------------------------------------------------

    async def nodes(self) -> list[NodeInfo]:
        return (await self._call("GET", "/v1/nodes", NodeList)).nodes

    async def sessions(
        self, user: str | None = None, node: str | None = None, limit: int = 100
    ) -> list[SessionInfo]:
        """Registry records, cluster-wide (live counters only for the answering node's own)."""
        params = _params(user=user, node=node, limit=limit)
        return (await self._call("GET", "/v1/sessions", SessionList, params=params)).sessions

    async def local_sessions(self, user: str | None = None, limit: int = 100) -> list[SessionInfo]:
        """This node's own sessions, every counter live."""
        params = _params(user=user, limit=limit)
        return (
            await self._call("GET", "/v1/local/sessions", LocalSessionList, params=params)
        ).sessions

    async def kick(self, session: str) -> SessionClosing:
        return await self._call("DELETE", f"/v1/sessions/{_segment(session)}", SessionClosing)

    async def kick_user(self, user: str) -> list[HeldSession]:
        params = {"user": user}
        return (
            await self._call("DELETE", "/v1/sessions", UserSessionsClosing, params=params)
        ).sessions

    async def revoke(self, user: str) -> UserRevoked:
        return await self._call("POST", f"/v1/users/{_segment(user)}/revoke", UserRevoked)

    async def publish(self, body: dict[str, Any]) -> PublishResult:
        return await self._call("POST", "/v1/messages", PublishResult, json=body)

    async def trail(self, message_id: str) -> MessageTrail:
        return await self._call("GET", f"/v1/messages/{_segment(message_id)}", MessageTrail)

    async def trace_context(self, message_id: str) -> MessageTrace:
        path = f"/v1/messages/{_segment(message_id)}/trace"
        return await self._call("GET", path, MessageTrace)

    async def webhooks(self) -> WebhookStatus:
        return await self._call("GET", "/v1/webhooks", WebhookStatus)

    async def drain(self, node: str) -> NodeDraining:
        return await self._call("POST", f"/v1/nodes/{_segment(node)}/drain", NodeDraining)

    async def ready(self) -> tuple[bool, list[str]]:
        """``/readyz``: whether the node is ready, and why not."""
        response = await self._send("GET", "/readyz")
        try:
            reasons = [str(r) for r in response.json().get("reasons", [])]
        except ValueError:
            reasons = [f"HTTP {response.status_code}"]
        return response.status_code == 200, reasons

    async def metrics(self) -> str:
        """The node's Prometheus exposition (``/metrics``, no key needed)."""
        response = await self._send("GET", "/metrics")
        if response.status_code != 200:
            raise Refused(response.status_code, "http_error", f"/metrics: {response.status_code}")
        return response.text

    # -- plumbing ------------------------------------------------------------------------------

    async def _call(self, method: str, path: str, into: type[T], **kwargs: Any) -> T:
        response = await self._send(method, path, **kwargs)
        if response.status_code >= 400:
            raise _refusal(response)
        try:
            return msgspec.json.decode(response.content, type=into)
        except msgspec.ValidationError as exc:
            raise Refused(
                response.status_code, "bad_answer", f"{self.url}{path} answered unexpectedly: {exc}"
            ) from None

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        if self._http is None:
            raise RuntimeError("use Api as `async with Api(...) as api`")
        try:
            return await self._http.request(method, path, **kwargs)
        except httpx.TimeoutException:
            what = f"the API at {self.url}"
            raise Unreachable(what, f"no answer within {self._timeout:g}s") from None
        except httpx.TransportError as exc:
            raise Unreachable(f"the API at {self.url}", str(exc) or type(exc).__name__) from None


def _params(**given: str | int | None) -> dict[str, str | int]:
    return {k: v for k, v in given.items() if v is not None}


def _segment(value: str) -> str:
    """``value`` as one path segment (``/`` and friends escaped)."""
    return quote(value, safe="")


def _refusal(response: httpx.Response) -> Refused:
    status = response.status_code
    try:
        error = msgspec.json.decode(response.content, type=ErrorAnswer).error
    except msgspec.DecodeError:
        return Refused(status, "http_error", f"HTTP {status} from {response.request.url}")
    message = error.message or f"HTTP {status}"
    if status == 401:
        message = "the API refused the key: give the right --api-key (or PUSHSVC_API_KEY)"
    elif status == 403:
        message = f"the key may not do this: {message}"
    elif status == 503:
        message = f"the cluster is unhealthy: {message}"
    return Refused(status, error.code, message)
