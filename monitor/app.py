"""The monitor service: reconciliation, canaries and alerts on an APScheduler, behind a lease.

:class:`Monitor` is the pump around the pure parts (:mod:`monitor.reconcile`,
:mod:`monitor.alerts`, :class:`monitor.canary.CanaryTrack`): it reads the broker, feeds them,
records metrics and posts what :class:`monitor.alerts.AlertBook` plans to Alertmanager. Its jobs:

- ``lease`` (every ``lease_ttl / 3``): take or keep the Redis lease. Only the holder — the
  *active* monitor — runs the other jobs; a standby waits, and takes over within ``lease_ttl``.
- ``reconcile`` (every ``monitor_interval``): run the bucket checks that are due.
- ``canary`` (every ``canary_interval``): follow the registry and publish one canary per node.
- ``alerts`` (every ``min(monitor_interval, canary_interval)``): state the alerts, post them.

Lifecycle: ``await start()`` (scheduler, HTTP server for ``/metrics`` and ``/healthz``), then
``await close()`` (idempotent: stops the jobs, the canaries, gives the lease up).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import uvicorn
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from monitor import metrics
from monitor.alertmanager import AlertmanagerClient, AlertmanagerError, PostableAlert, rfc3339
from monitor.alerts import Alert, AlertBook, Send, delivery_loss, heartbeat_missing, node_stalled
from monitor.canary import Canary
from monitor.reconcile import FINAL, BucketReport, Policy, Reconciler, gap, reconcile
from pushsvc.apikeys import Scope, secret_for
from pushsvc.broker.base import Broker, NodeInfo, Pair
from pushsvc.errors import BrokerError
from pushsvc.settings import MonitorSettings

log = logging.getLogger(__name__)

DETAIL_CHUNK = 1000  # trails read at a time when looking for a bucket's missing pairs
FORGET_MISSING_NODE = 600.0  # seconds a node without heartbeat is reported after it vanished


class Monitor:
    """One monitor. ``alertmanager`` None: alerts are planned but not sent (``--once``, tests)."""

    def __init__(
        self,
        settings: MonitorSettings,
        broker: Broker,
        alertmanager: AlertmanagerClient | None = None,
        *,
        canaries: bool = True,
    ) -> None:
        s = settings
        self.settings = settings
        self.broker = broker
        self.alertmanager = alertmanager
        self.policy = Policy(
            s.ack_timeout, s.max_attempts, s.monitor_grace, s.reconnect_window, s.late_check
        )
        self.book = AlertBook(s.alert_resend)
        self.reconciler: Reconciler | None = None
        self.active = False
        self.last_reconcile = 0.0
        self.reports: list[BucketReport] = []  # of the last reconciliation
        self.canary: Canary | None = None
        key = secret_for(s.api_key_entries(), Scope.PUBLISH, Scope.TOKENS) if canaries else None
        if key is not None:
            self.canary = Canary(
                key,
                s.canary_stall,
                s.canary_interval,
                self._latency,
                scheme=s.internal_scheme,
                tls=s.client_tls(),
            )
        elif canaries:
            log.warning("no API key with the publish and tokens scopes: the canary is off")
        self._nodes: list[NodeInfo] = []
        self._lapsed: dict[str, float] = {}  # node -> when its heartbeat lapsed
        self._canary_lost: dict[str, int] = {}  # node -> canary losses already counted
        self._scheduler: Any = None
        self._server: _Server | None = None
        self._serving: asyncio.Task[None] | None = None
        self._closed = False

    # -- the lease --------------------------------------------------------------------------

    def lookback(self) -> float:
        """How far back a monitor that becomes active looks (every check of those buckets)."""
        return self.policy.due(0, FINAL) + self.settings.loss_window

    async def hold_lease(self) -> bool:
        """Take or keep the lease; on a change of role start or stop being the active one."""
        s = self.settings
        try:
            held = await self.broker.lease.acquire(s.monitor_id, s.lease_ttl)
        except BrokerError as exc:
            metrics.errors.labels("redis").inc()
            log.warning("lease check failed", extra={"error": str(exc)})
            held = False
        if held and not self.active:
            log.info("active: this monitor holds the lease", extra={"monitor": s.monitor_id})
            since = time.time() - self.lookback()
            if self.reconciler is None:
                self.reconciler = Reconciler(self.policy, since)
            else:  # active again: what this process counted already is not counted twice
                self.reconciler.resume(since)
            self.book = AlertBook(s.alert_resend)
        elif not held and self.active:
            log.warning("standby: the lease is held elsewhere", extra={"monitor": s.monitor_id})
        self.active = held
        metrics.active.set(1 if held else 0)
        return held

    # -- reconciliation ---------------------------------------------------------------------

    async def reconcile(self, now: float) -> list[BucketReport]:
        """Run every bucket check due at ``now``; return their reports."""
        reconciler = self.reconciler
        if reconciler is None:
            reconciler = self.reconciler = Reconciler(self.policy, now - self.lookback())
        due = reconciler.due(now)
        reports = []
        for start in range(0, len(due), 200):
            chunk = due[start : start + 200]
            tallies = await self.broker.ledger.tallies([b for b, _ in chunk])
            for bucket, check in chunk:
                tally = tallies.get(bucket, {})
                missing = gap(tally)
                pairs = await self._unacked(bucket, missing) if missing else None
                report = reconcile(bucket, check, tally, pairs, now)
                metrics.add(reconciler.apply(report))
                metrics.buckets_checked.labels(str(check)).inc()
                reports.append(report)
        self.last_reconcile = time.time()
        metrics.last_reconcile.set(self.last_reconcile)
        self.reports = reports
        return reports

    async def _unacked(self, bucket: int, missing: int) -> list[Pair] | None:
        """The pairs of ``bucket`` not acked, read until ``missing`` are found (None: no
        message ids left for the bucket)."""
        ledger = self.broker.ledger
        ids = await ledger.bucket_messages(bucket)
        if not ids:
            return None
        found: list[Pair] = []
        for start in range(0, len(ids), DETAIL_CHUNK):
            pairs = await ledger.pairs(ids[start : start + DETAIL_CHUNK])
            found += [p for p in pairs if not p.acked]
            if len(found) >= missing:
                break
        return found

    # -- canaries ---------------------------------------------------------------------------

    async def probe(self, now: float) -> None:
        """Follow the registry and send one canary through every node."""
        self._nodes = await self.broker.registry.nodes()
        for node in self._nodes:
            metrics.node_seen(node.id)
        if self.canary is not None:
            await self.canary.tick(self._nodes, now)

    def _latency(self, node: str, seconds: float) -> None:
        metrics.canary_latency.labels(node).observe(seconds)

    # -- alerts -----------------------------------------------------------------------------

    async def desired(self, now: float) -> list[Alert]:
        """The alerts that should be active at ``now``."""
        out: list[Alert] = []
        runbooks = self.settings.runbook_base_url
        if self.reconciler is not None:
            for node, loss in sorted(
                self.reconciler.losses(now, self.settings.loss_window).items()
            ):
                if loss.missing:
                    out.append(delivery_loss(node, loss, runbooks))
        live = {n.id: n for n in self._nodes}
        if self.canary is not None:
            for node, track in sorted(self.canary.tracks.items()):
                metrics.canary_up.labels(node).set(1 if track.up(now) else 0)
                counted = self._canary_lost.get(node, 0)
                if track.lost != counted:
                    metrics.canary_lost.labels(node).inc(max(0, track.lost - counted))
                    self._canary_lost[node] = track.lost
                if node in live and not track.up(now):
                    out.append(node_stalled(node, track.silent_for(now), runbooks))
        heartbeats = await self.broker.registry.heartbeats()
        for node, expiry in heartbeats.items():
            if expiry < now and node not in live:
                self._lapsed.setdefault(node, expiry)
        for node in list(self._lapsed):
            if node in live or now - self._lapsed[node] > FORGET_MISSING_NODE:
                del self._lapsed[node]
            else:
                out.append(heartbeat_missing(node, now - self._lapsed[node], runbooks))
        return out

    async def alert(self, now: float) -> list[Send]:
        """Plan and post the alerts; return what was planned."""
        sends = self.book.plan(await self.desired(now), now)
        if not sends or self.alertmanager is None:
            return sends
        body = [
            PostableAlert(
                labels=s.alert.labels(), annotations=dict(s.alert.annotations),
                startsAt=rfc3339(s.starts_at), endsAt=rfc3339(s.ends_at),
            )
            for s in sends
        ]  # fmt: skip
        try:
            await self.alertmanager.post(body)
        except AlertmanagerError as exc:
            metrics.errors.labels("alertmanager").inc()
            log.warning("alerts not delivered, will retry", extra={"error": exc.message})
            self.book.failed(sends)
            return sends
        for s in sends:
            state = "resolved" if s.resolved else "firing"
            metrics.alerts_sent.labels(s.alert.name, state).inc()
            log.info(
                "alert sent",
                extra={"alertname": s.alert.name, "node": s.alert.node, "state": state},
            )
        return sends

    # -- jobs -------------------------------------------------------------------------------

    async def _job(self, name: str, step: Any) -> None:
        """Run one job step when active; a broker failure is logged and counted, not raised."""
        if not self.active:
            return
        try:
            await step(time.time())
        except BrokerError as exc:
            metrics.errors.labels("redis").inc()
            log.warning("job failed", extra={"job": name, "error": exc.message})

    async def start(self, *, http: bool = True) -> None:
        """Take the lease if free, start the jobs and (with ``http``) the HTTP server.

        An embedded monitor (inside a single node on the memory broker) runs without its own
        server: the node's ``/metrics`` carries the monitor's metrics too."""
        s = self.settings
        await self.hold_lease()
        scheduler = AsyncIOScheduler()
        every = {
            "lease": s.lease_ttl / 3,
            "reconcile": s.monitor_interval,
            "canary": s.canary_interval,
            "alerts": min(s.monitor_interval, s.canary_interval),
        }
        steps = {"reconcile": self.reconcile, "canary": self.probe, "alerts": self.alert}
        scheduler.add_job(
            self.hold_lease, "interval", seconds=every["lease"], id="lease",
            max_instances=1, coalesce=True,
        )  # fmt: skip
        for name, step in steps.items():
            scheduler.add_job(
                self._job, "interval", args=(name, step), seconds=every[name], id=name,
                max_instances=1, coalesce=True, next_run_time=datetime.now(),  # noqa: DTZ005 - APScheduler's local clock
            )  # fmt: skip
        scheduler.start()
        self._scheduler = scheduler
        if not http:
            return
        self._server = _Server(
            uvicorn.Config(
                self.http_app(), host=s.monitor_host, port=s.monitor_port, loop="none",
                lifespan="off", access_log=False, log_config=None, server_header=False,
            )
        )  # fmt: skip
        self._serving = asyncio.get_running_loop().create_task(self._server.serve())

    async def close(self) -> None:
        """Stop the jobs, the canaries and the HTTP server; give the lease up (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
        if self._server is not None and self._serving is not None:
            self._server.should_exit = True
            with contextlib.suppress(Exception):
                await self._serving
        if self.canary is not None:
            await self.canary.close()
        if self.active:
            with contextlib.suppress(BrokerError):
                await self.broker.lease.release(self.settings.monitor_id)
        if self.alertmanager is not None:
            await self.alertmanager.aclose()

    # -- HTTP -------------------------------------------------------------------------------

    def http_app(self) -> Starlette:
        """``/metrics`` (Prometheus) and ``/healthz`` (200 while the jobs run)."""

        async def prometheus(_: Request) -> Response:
            return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)

        async def healthz(_: Request) -> JSONResponse:
            stale = self.active and time.time() - self.last_reconcile > 3 * max(
                self.settings.monitor_interval, 5.0
            )
            body = {
                "status": "stale" if stale else "ok",
                "active": self.active,
                "monitor": self.settings.monitor_id,
                "last_reconcile": self.last_reconcile or None,
            }
            return JSONResponse(body, status_code=503 if stale else 200)

        return Starlette(routes=[Route("/metrics", prometheus), Route("/healthz", healthz)])


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the monitor's shutdown decides."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
