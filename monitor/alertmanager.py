"""A typed client for Alertmanager's v2 API: post alerts, list them (httpx, async).

    async with AlertmanagerClient("http://alertmanager:9093") as am:
        await am.post([PostableAlert(labels={...}, annotations={...}, startsAt=..., endsAt=...)])
        active = await am.alerts()

Times are RFC 3339 strings (:func:`rfc3339`). Every failure — refused, timed out, a status other
than 2xx, a body that does not decode — raises :class:`AlertmanagerError`.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from types import TracebackType
from typing import Self

import httpx
import msgspec

from pushsvc.errors import PushError


class AlertmanagerError(PushError):
    """Alertmanager could not be reached or refused the request."""

    slug = "alertmanager"


class PostableAlert(msgspec.Struct, kw_only=True, omit_defaults=True):
    """An alert as ``POST /api/v2/alerts`` takes it."""

    labels: dict[str, str]
    annotations: dict[str, str] = {}
    startsAt: str = ""  # noqa: N815 - the API's field names
    endsAt: str = ""  # noqa: N815
    generatorURL: str = ""  # noqa: N815


class AlertStatus(msgspec.Struct, kw_only=True):
    state: str  # unprocessed | active | suppressed
    silencedBy: list[str] = []  # noqa: N815
    inhibitedBy: list[str] = []  # noqa: N815


class GettableAlert(msgspec.Struct, kw_only=True):
    """An alert as ``GET /api/v2/alerts`` lists it."""

    labels: dict[str, str]
    annotations: dict[str, str] = {}
    startsAt: str = ""  # noqa: N815
    endsAt: str = ""  # noqa: N815
    updatedAt: str = ""  # noqa: N815
    fingerprint: str = ""
    status: AlertStatus | None = None


def rfc3339(unix: float) -> str:
    """``unix`` seconds as an RFC 3339 UTC timestamp with milliseconds."""
    moment = datetime.datetime.fromtimestamp(unix, tz=datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


_alerts = msgspec.json.Decoder(list[GettableAlert])
_encode = msgspec.json.Encoder().encode


class AlertmanagerClient:
    """One Alertmanager (``url`` without ``/api/v2``). ``await aclose()`` or use ``async with``."""

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.AsyncClient(base_url=self.url + "/api/v2", timeout=timeout)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def post(self, alerts: list[PostableAlert]) -> None:
        """Create, refresh or resolve ``alerts`` (by their labels)."""
        if alerts:
            await self._request("POST", "/alerts", content=_encode(alerts))

    async def alerts(
        self, *, active: bool = True, resolved_too: bool = False, filters: Sequence[str] = ()
    ) -> list[GettableAlert]:
        """The alerts Alertmanager holds; ``filters`` are matchers like ``alertname="X"``.

        Alertmanager drops resolved alerts from this list (``resolved_too`` is kept for the
        API's shape: it lists unprocessed alerts as well)."""
        params: list[tuple[str, str | int | float | bool | None]] = [
            ("active", active), ("unprocessed", resolved_too),
        ]  # fmt: skip
        params += [("filter", f) for f in filters]
        response = await self._request("GET", "/alerts", params=params)
        try:
            return _alerts.decode(response.content)
        except msgspec.DecodeError as exc:
            raise AlertmanagerError(f"undecodable alert list: {exc}") from exc

    async def ready(self) -> bool:
        """True when Alertmanager answers its status endpoint."""
        try:
            await self._request("GET", "/status")
        except AlertmanagerError:
            return False
        return True

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: list[tuple[str, str | int | float | bool | None]] | None = None,
        content: bytes | None = None,
    ) -> httpx.Response:
        headers = {"Content-Type": "application/json"} if content is not None else {}
        try:
            response = await self._http.request(
                method, path, headers=headers, params=params, content=content
            )
        except httpx.HTTPError as exc:
            raise AlertmanagerError(f"alertmanager {self.url} unreachable: {exc}") from exc
        if not response.is_success:
            raise AlertmanagerError(
                f"alertmanager answered {response.status_code}: {response.text[:200]}"
            )
        return response
