"""The one settings object of a pushsvc process.

Built at the edge (the CLI) from ``PUSHSVC_*`` environment variables and command-line flags, which
map 1:1 onto the fields below (``--ack-timeout`` is ``ack_timeout`` is ``PUSHSVC_ACK_TIMEOUT``).
Nothing else in the package reads ``os.environ``.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from pushsvc.broker.keys import DEFAULT_PREFIX
from pushsvc.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent


def default_node_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PUSHSVC_", extra="ignore")

    # listeners and identity
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535, description="client listener (WebSocket, demo)")
    internal_port: int = Field(8081, ge=0, le=65535, description="internal API listener")
    internal_host: str = "127.0.0.1"
    node_id: str = Field(default_factory=default_node_id)
    redis_url: str | None = None
    redis_prefix: str = Field(
        DEFAULT_PREFIX, min_length=1, description="prefix of every Redis key and channel name"
    )
    allow_redis_eviction: bool = Field(
        False, description="start even when redis's maxmemory-policy is not noeviction"
    )
    workers: int = Field(1, ge=1, le=64)
    max_connections: int = Field(100_000, ge=1)
    reuse_port: bool = Field(False, description="bind the client port with SO_REUSEPORT")
    dev: bool = False

    # secrets
    token_secret: str = ""
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # protocol timing (seconds)
    heartbeat: float = Field(25.0, gt=0)
    hello_timeout: float = Field(10.0, gt=0)
    ack_timeout: float = Field(10.0, gt=0)
    max_attempts: int = Field(5, ge=1)
    drain_timeout: float = Field(10.0, ge=0)

    # limits
    history_size: int = Field(1000, ge=1, description="entries kept per stream")
    history_ttl: int = Field(86_400, ge=1, description="seconds a stream's history is kept")
    default_ttl: int = Field(86_400, ge=1, description="message ttl when a publish gives none")
    outbox_cap: int = Field(1 << 20, ge=1024, description="bytes buffered per session")
    outbox_grace: float = Field(5.0, ge=0, description="seconds a session may stay over the cap")
    max_frame_size: int = Field(64 * 1024, ge=256, description="largest client frame, bytes")
    max_body_size: int = Field(1 << 20, ge=1024, description="largest HTTP body, bytes")
    max_message_size: int = Field(64 * 1024, ge=16, description="largest encoded data, bytes")
    client_frame_rate: float = Field(50.0, gt=0, description="client frames per second")
    client_frame_burst: int = Field(200, ge=1)
    idempotency_ttl: int = Field(86_400, ge=1)
    token_ttl: int = Field(3600, ge=1)
    ledger_flush_interval: float = Field(0.05, gt=0)
    registry_interval: float = Field(2.0, gt=0, description="node heartbeat period, seconds")

    # reaching closed pages: Web Push escalation and webhooks (docs/escalation.md)
    vapid_private_key: Path | None = Field(None, description="VAPID private key, PEM file")
    vapid_subject: str = Field("", description="VAPID contact, mailto: or https: URL")
    push_retention: int = Field(
        30 * 86_400, ge=60, description="a subscription outlives its device's last session, s"
    )
    escalate_after: int | None = Field(
        None, ge=1, description="message.unacked this long after publish when no push.after, s"
    )
    webhook_urls: Annotated[list[str], NoDecode] = Field(default_factory=list)
    webhook_secret: str = Field("", description="signs every webhook (Pushsvc-Signature)")
    escalation_lease: float = Field(
        30.0, ge=0.5, description="a claimed escalation or webhook is hidden this long, s"
    )

    # game days: POST /v1/admin/faults is refused unless this is on (docs/runbooks.md)
    enable_fault_injection: bool = Field(False, description="accept /v1/admin/faults")

    # the monitor (`pushsvc monitor`, docs/monitoring.md); it also reads redis_url, api_keys,
    # ack_timeout and max_attempts from here
    alertmanager_url: str | None = Field(None, description="Alertmanager base URL (v2 API)")
    monitor_host: str = "127.0.0.1"
    monitor_port: int = Field(9464, ge=0, le=65535, description="monitor /metrics, /healthz")
    monitor_id: str = Field(default_factory=default_node_id, description="this monitor's id")
    monitor_interval: float = Field(5.0, ge=0.2, description="reconciliation period, s")
    monitor_grace: float = Field(10.0, ge=0, description="added to every deadline, s")
    reconnect_window: float = Field(60.0, ge=0, description="a device's time to come back, s")
    late_check: float = Field(120.0, ge=0, description="the last look at a bucket comes this late")
    loss_window: float = Field(300.0, gt=0, description="a loss keeps its alert this long, s")
    canary_interval: float = Field(5.0, ge=0.2, description="canary publish period, s")
    canary_stall: float = Field(20.0, gt=0, description="no canary for this long: stalled, s")
    alert_resend: float = Field(60.0, ge=0.2, description="re-send active alerts every, s")
    lease_ttl: float = Field(15.0, ge=0.5, description="the active monitor's lease, s")

    # paths
    static_dir: Path = REPO_ROOT / "clients" / "js"
    log_level: str = "INFO"
    metrics: bool = Field(True, description="record metrics (off only to measure their cost)")

    @field_validator("api_keys", "webhook_urls", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @field_validator("vapid_private_key", "escalate_after", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.port and self.internal_port and self.port == self.internal_port:
            raise ValueError("port and internal_port must differ")
        if self.webhook_urls and not self.webhook_secret:
            raise ValueError("webhook_urls need a webhook_secret to sign with")
        for url in self.webhook_urls:
            if not url.startswith(("https://", "http://")):
                raise ValueError(f"webhook url {url!r} is not an http(s) URL")
        return self

    def require_secrets(self) -> None:
        """Raise :class:`ConfigError` unless a token secret and an API key are set.

        ``--dev`` fills both in before this is called (see ``cli/serve.py``).
        """
        missing = []
        if not self.token_secret:
            missing.append("PUSHSVC_TOKEN_SECRET (or --token-secret)")
        if not self.api_keys:
            missing.append("PUSHSVC_API_KEYS (or --api-keys)")
        if missing:
            raise ConfigError(
                "pushsvc needs " + " and ".join(missing) + "; for a local try-out use --dev"
            )
        if len(self.token_secret) < 32:
            raise ConfigError("PUSHSVC_TOKEN_SECRET must be at least 32 characters (HS256)")
