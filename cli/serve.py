"""``pushsvc serve``: run a node (or ``--workers K`` nodes sharing the client port)."""

from __future__ import annotations

import asyncio
import logging
import resource
import secrets
import sys
from typing import Annotated

import typer

from cli.settings import build, err, fail
from pushsvc.errors import ConfigError
from pushsvc.settings import FD_RESERVE, Settings
from pushsvc.telemetry import logging as jsonlog

Opt = typer.Option


def serve(
    port: Annotated[int | None, Opt(help="Client listener port (WebSocket, demo). [8080]")] = None,
    internal_port: Annotated[int | None, Opt(help="Internal API port. [8081]")] = None,
    host: Annotated[str | None, Opt(help="Client listener address. [127.0.0.1]")] = None,
    internal_host: Annotated[str | None, Opt(help="Internal API address. [127.0.0.1]")] = None,
    node_id: Annotated[str | None, Opt(help="Node id. [hostname:pid]")] = None,
    redis_url: Annotated[str | None, Opt(help="Redis URL; absent: in-memory broker.")] = None,
    redis_prefix: Annotated[
        str | None, Opt(help="Prefix of every Redis key and channel. [pushsvc:]")
    ] = None,
    allow_redis_eviction: Annotated[
        bool | None,
        Opt("--allow-redis-eviction", help="Start even if Redis may evict keys (silent loss)."),
    ] = None,
    workers: Annotated[int | None, Opt(help="Node processes sharing the client port. [1]")] = None,
    max_connections: Annotated[int | None, Opt(help="Sessions per node. [fd limit - 64]")] = None,
    token_secret: Annotated[
        str | None, Opt(help="HS256 secret, or kid:secret entries (the first mints).")
    ] = None,
    api_keys: Annotated[
        str | None, Opt(help="API keys: name:secret:scopes[:rate=<n>/s], comma-separated.")
    ] = None,
    api_keys_file: Annotated[str | None, Opt(help="File of API key entries, one a line.")] = None,
    token_public_keys: Annotated[
        str | None, Opt(help="PEM file of RS256/ES256 public keys for client tokens.")
    ] = None,
    token_jwks_url: Annotated[str | None, Opt(help="JWKS URL of an identity provider.")] = None,
    token_max_ttl: Annotated[int | None, Opt(help="Longest token lifetime, s. [43200]")] = None,
    allowed_origins: Annotated[
        str | None, Opt(help="Origins the WebSocket upgrade accepts, comma-separated. [any]")
    ] = None,
    internal_tls_cert: Annotated[str | None, Opt(help="Serve the internal API over HTTPS.")] = None,
    internal_tls_key: Annotated[str | None, Opt(help="Private key of --internal-tls-cert.")] = None,
    internal_tls_client_ca: Annotated[
        str | None, Opt(help="Require client certificates signed by this CA (mTLS).")
    ] = None,
    docs: Annotated[bool | None, Opt("--docs", help="Serve /docs and /openapi.json.")] = None,
    heartbeat: Annotated[float | None, Opt(help="Seconds between server pings. [25]")] = None,
    hello_timeout: Annotated[float | None, Opt(help="Seconds to wait for hello. [10]")] = None,
    ack_timeout: Annotated[float | None, Opt(help="Seconds before redelivery. [10]")] = None,
    max_attempts: Annotated[int | None, Opt(help="Writes before closing with 4011. [5]")] = None,
    history_size: Annotated[int | None, Opt(help="Entries kept per stream. [1000]")] = None,
    history_ttl: Annotated[int | None, Opt(help="Seconds history is kept. [86400]")] = None,
    outbox_cap: Annotated[int | None, Opt(help="Bytes buffered per session. [1 MiB]")] = None,
    max_frame_size: Annotated[int | None, Opt(help="Largest client frame. [64 KiB]")] = None,
    drain_timeout: Annotated[float | None, Opt(help="Seconds to wait on drain. [10]")] = None,
    default_ttl: Annotated[int | None, Opt(help="Message ttl when none given, s. [86400]")] = None,
    outbox_grace: Annotated[
        float | None, Opt(help="Seconds a session may stay over cap. [5]")
    ] = None,
    max_body_size: Annotated[int | None, Opt(help="Largest HTTP body, bytes. [1 MiB]")] = None,
    max_message_size: Annotated[int | None, Opt(help="Largest encoded data. [64 KiB]")] = None,
    client_frame_rate: Annotated[float | None, Opt(help="Client frames per second. [50]")] = None,
    client_frame_burst: Annotated[int | None, Opt(help="Client frame burst. [200]")] = None,
    idempotency_ttl: Annotated[int | None, Opt(help="Seconds keys are kept. [86400]")] = None,
    token_ttl: Annotated[int | None, Opt(help="Default token lifetime, s. [3600]")] = None,
    ledger_flush_interval: Annotated[float | None, Opt(help="Accounting flush, s. [0.05]")] = None,
    registry_interval: Annotated[float | None, Opt(help="Node heartbeat period, s. [2]")] = None,
    static_dir: Annotated[
        str | None, Opt(help="Browser client and demo files. [the shipped ones]")
    ] = None,
    reuse_port: Annotated[bool | None, Opt("--reuse-port", help="Bind with SO_REUSEPORT.")] = None,
    log_level: Annotated[str | None, Opt(help="Log level. [INFO]")] = None,
    dev: Annotated[
        bool | None,
        Opt("--dev", help="Dev mode (loopback only): demo API and /docs on, secrets generated."),
    ] = None,
    enable_fault_injection: Annotated[
        bool | None,
        Opt("--enable-fault-injection", help="Accept POST /v1/admin/faults (game days only)."),
    ] = None,
) -> None:
    """Run a pushsvc node: the client listener and the internal API."""
    settings = build(**{k: v for k, v in locals().items() if k != "api_keys"},
                     **({"api_keys": api_keys} if api_keys is not None else {}))  # fmt: skip
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
    if settings.workers > 1:
        from cli.workers import run_workers  # noqa: PLC0415 - only multi-worker runs need it

        raise typer.Exit(run_workers(settings))
    from pushsvc.server import run  # noqa: PLC0415 - keeps `pushsvc --help` fast

    try:
        run(settings)
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
