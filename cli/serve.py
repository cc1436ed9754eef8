"""``pushsvc serve``: run a node (or ``--workers K`` nodes sharing the client port)."""

from __future__ import annotations

import asyncio
import functools
import logging
import resource
import secrets
import sys
from typing import Any

import typer

from cli.embedded import EMBEDDED_FLAGS, embedded_monitor, embedded_settings
from cli.settings import build, err, fail, flags_of
from pushsvc.errors import ConfigError
from pushsvc.settings import FD_RESERVE, MonitorSettings, NodeSettings, Settings
from pushsvc.telemetry import logging as jsonlog

#: Node settings only the environment sets (``PUSHSVC_<NAME>``), not flags: the loss deadlines,
#: the TLS client side, the JWKS refresh period, reaching closed pages (docs/escalation.md) and
#: the metrics switch.
ENV_ONLY = frozenset(
    {
        "push_retention",
        "token_jwks_refresh",
        "ca_file",
        "client_cert",
        "client_key",
        "monitor_grace",
        "reconnect_window",
        "late_check",
        "vapid_private_key",
        "vapid_subject",
        "escalate_after",
        "webhook_urls",
        "webhook_secret",
        "escalation_lease",
        "metrics",
    }
)
#: Every other node setting is a flag of ``pushsvc serve`` (``--max-connections`` is
#: ``max_connections`` is ``PUSHSVC_MAX_CONNECTIONS``).
SERVE_FLAGS = [name for name in NodeSettings.model_fields if name not in ENV_ONLY]


@flags_of(MonitorSettings, EMBEDDED_FLAGS)
@flags_of(NodeSettings, SERVE_FLAGS)
def serve(**flags: Any) -> None:
    """Run a pushsvc node: the client listener and the internal API."""
    monitor_flags = {name: flags.pop(name) for name in EMBEDDED_FLAGS}
    settings = build(**flags)
    try:
        settings.check_dev_host()  # before any secret is made up and shown
        if settings.dev:
            settings = _dev_secrets(settings)
        settings.require_secrets()
    except ConfigError as exc:
        fail(exc.message)
    jsonlog.setup(settings.log_level)
    _raise_fd_limit(settings)
    if settings.redis_url:
        _check_redis(settings, settings.redis_url)
    if not (settings.static_dir / "pushsvc.js").is_file():
        err.print(
            f"[yellow]warning:[/] no pushsvc.js in {settings.static_dir}: "
            "/client/ and /demo/ will answer 404 (check --static-dir)"
        )
    # without Redis the node runs the monitor inside itself: its settings are checked now
    monitor = None if settings.redis_url else embedded_settings(settings, **monitor_flags)
    if settings.workers > 1:
        from cli.workers import run_workers  # noqa: PLC0415 - only multi-worker runs need it

        raise typer.Exit(run_workers(settings, monitor_flags))
    from pushsvc.server import run  # noqa: PLC0415 - keeps `pushsvc --help` fast

    try:
        run(settings, None if monitor is None else functools.partial(embedded_monitor, monitor))
    except ConfigError as exc:  # e.g. a port in use; whatever had started was closed
        fail(exc.message)


def _dev_secrets(settings: Settings) -> Settings:
    changes: dict[str, object] = {}
    if not settings.token_secret:
        changes["token_secret"] = secrets.token_urlsafe(32)
    if not settings.api_key_entries():
        changes["api_keys"] = ["dev-" + secrets.token_urlsafe(24)]
        err.print(f"[yellow]dev mode:[/] API key {changes['api_keys'][0]}")  # type: ignore[index]
    if "token_secret" in changes:
        err.print(f"[yellow]dev mode:[/] token secret {changes['token_secret']}")
    return settings.model_copy(update=changes) if changes else settings


def _check_redis(settings: Settings, url: str) -> None:
    """Refuse a Redis that may evict keys (exit 2), unless allowed; log what could not be
    checked."""
    from pushsvc.broker.redis.policy import check  # noqa: PLC0415 - only clusters need redis

    loop = asyncio.new_event_loop()  # not asyncio.run: it leaves no current loop for the node
    try:
        verdict = loop.run_until_complete(check(url))
    except ConfigError as exc:
        fail(f"invalid redis url: {exc.message}")
    finally:
        loop.close()
    log = logging.getLogger("pushsvc.serve")
    for warning in verdict.warnings:
        log.warning(warning)
    if verdict.refuse:
        if not settings.allow_redis_eviction:
            print(f"error: {verdict.refuse}", file=sys.stderr)  # one line, however wide
            raise typer.Exit(2)
        log.warning("%s (allowed by --allow-redis-eviction)", verdict.refuse.split(";")[0])


def _raise_fd_limit(settings: Settings) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    usable = hard - FD_RESERVE
    if "max_connections" in settings.model_fields_set and settings.max_connections > usable:
        err.print(
            f"[yellow]warning:[/] --max-connections {settings.max_connections} exceeds what one "
            f"process can hold ({usable} with an open-files limit of {hard}); "
            "run more --workers or raise the limit"
        )
