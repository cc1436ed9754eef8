"""An identity provider's signing keys, fetched from its JWKS URL in the background.

:class:`JwksKeys` answers :meth:`key` from its cache only, so verifying a token never waits on
the network. A background task refetches the set every ``refresh`` seconds, and sooner when a
token names a ``kid`` the cache does not know, but at most once per :data:`UNKNOWN_KID_INTERVAL`
for that reason (a flood of tokens with made-up ``kid``\\ s costs one fetch a minute). A fetch that
fails — the endpoint is down, slow (``timeout``) or answers something that is not a key set —
keeps the cached keys and is logged.

Calling contract: ``await start()`` (one first fetch, bounded by ``timeout``, then the
background task), ``await close()`` at the end; both idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time

import httpx
import jwt

from pushsvc.auth import PublicKey

log = logging.getLogger(__name__)

#: Seconds between two fetches caused by unknown ``kid``\ s.
UNKNOWN_KID_INTERVAL = 60.0
_FAMILY = {"RS256": "RSA", "ES256": "EC"}


class JwksKeys:
    """The keys of the JWKS at ``url``; see the module docstring."""

    def __init__(
        self,
        url: str,
        refresh: float = 300.0,
        timeout: float = 5.0,
        tls: ssl.SSLContext | None = None,
        unknown_kid_interval: float = UNKNOWN_KID_INTERVAL,
    ) -> None:
        self.url = url
        self.refresh = refresh
        self.timeout = timeout
        self.unknown_kid_interval = unknown_kid_interval
        self.keys: dict[str, jwt.PyJWK] = {}
        self.fetches = 0  # attempts, for tests and logs
        self._verify: ssl.SSLContext | bool = tls if tls is not None else True
        self._wanted = asyncio.Event()
        self._last_unknown = float("-inf")
        self._task: asyncio.Task[None] | None = None
        self._http: httpx.AsyncClient | None = None

    def key(self, kid: str, algorithm: str) -> PublicKey | None:
        found = self.keys.get(kid)
        if found is None:
            now = time.monotonic()
            if now - self._last_unknown >= self.unknown_kid_interval:
                self._last_unknown = now
                self._wanted.set()
            return None
        if found.key_type != _FAMILY.get(algorithm) or found.algorithm_name not in (
            algorithm,
            None,
        ):
            return None
        key: PublicKey = found.key
        return key

    async def start(self) -> None:
        if self._http is not None:
            return
        self._http = httpx.AsyncClient(timeout=self.timeout, verify=self._verify)
        await self.fetch()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="jwks")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def fetch(self) -> bool:
        """Fetch the set once; True when the cache was replaced."""
        assert self._http is not None, "start() first"
        self.fetches += 1
        try:
            response = await self._http.get(self.url)
            response.raise_for_status()
            found = jwt.PyJWKSet.from_json(response.text)
        except (httpx.HTTPError, jwt.PyJWTError, ValueError, TypeError, KeyError) as exc:
            log.warning(
                "JWKS fetch failed; keeping the cached keys",
                extra={
                    "url": self.url,
                    "error": f"{type(exc).__name__}: {str(exc)[:200]}",
                    "cached": len(self.keys),
                },
            )
            return False
        keys = {k.key_id: k for k in found.keys if k.key_id and k.key_type in ("RSA", "EC")}
        if not keys:
            log.warning(
                "JWKS without usable keys; keeping the cached keys", extra={"url": self.url}
            )
            return False
        if set(keys) != set(self.keys):
            log.info("JWKS keys", extra={"url": self.url, "kids": sorted(keys)})
        self.keys = keys
        return True

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wanted.wait(), self.refresh)
            self._wanted.clear()
            await self.fetch()
