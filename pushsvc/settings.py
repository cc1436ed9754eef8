"""The one settings object of a pushsvc process.

Every process reads :class:`SharedSettings` alike; a node adds :class:`NodeSettings` (also named
:data:`Settings`), the monitor :class:`MonitorSettings`, the operator commands theirs
(``cli.cluster.OperatorSettings``). One environment file serves them all.

Built at the edge (the CLI) from ``PUSHSVC_*`` environment variables and command-line flags, which
map 1:1 onto the fields below (``--ack-timeout`` is ``ack_timeout`` is ``PUSHSVC_ACK_TIMEOUT``).
Nothing else in the package reads ``os.environ``.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
import resource
import secrets
import socket
import ssl
from pathlib import Path
from typing import Annotated, Any, Self
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from pushsvc.apikeys import MIN_SECRET_LENGTH, parse_entries
from pushsvc.assets import RUNBOOK_PLACEHOLDER, asset_dir
from pushsvc.auth import TOKEN_TTL_CEILING, load_pem_keys, token_secrets
from pushsvc.broker.keys import DEFAULT_PREFIX
from pushsvc.core.handshake import normal_origin
from pushsvc.errors import ConfigError
from pushsvc.tls import client_context

REPO_ROOT = Path(__file__).resolve().parent.parent


def default_node_id() -> str:
    """``hostname:pid``: the monitor's id (operators see it, patients never do)."""
    return f"{socket.gethostname()}:{os.getpid()}"


FD_RESERVE = 64  # listeners, broker connections, log files


def default_max_connections() -> int:
    """What one process can hold: its hard open-files limit (a node raises its soft limit to it)
    less :data:`FD_RESERVE`, at most 100,000."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        return 100_000
    return max(1, min(100_000, hard - FD_RESERVE))


def opaque_node_id() -> str:
    """A node's default id: random, so the welcome every patient gets names no host or pid
    (the registry keeps those for operators)."""
    return "node-" + secrets.token_hex(5)


class SharedSettings(BaseSettings):
    """What every process of a cluster reads alike: Redis and its keys, token verification and
    API keys, how the internal API is reached, and the ack and history parameters."""

    model_config = SettingsConfigDict(env_prefix="PUSHSVC_", extra="ignore")

    # the broker
    redis_url: str | None = Field(
        None, description="the cluster's Redis URL; absent: a single node, in-memory broker"
    )
    redis_prefix: str = Field(
        DEFAULT_PREFIX, min_length=1, description="prefix of every Redis key and channel name"
    )
    redis_min_replicas: int = Field(
        0, ge=0, description="replicas that must confirm a publish (WAIT) before it is accepted"
    )
    history_size: int = Field(1000, ge=1, description="entries kept per stream")
    history_ttl: int = Field(86_400, ge=1, description="seconds a stream's history is kept")
    idempotency_ttl: int = Field(86_400, ge=1, description="seconds idempotency keys are kept")
    registry_interval: float = Field(2.0, gt=0, description="node heartbeat period, seconds")
    push_retention: int = Field(
        30 * 86_400, ge=60, description="a subscription outlives its device's last session, s"
    )
    dev: bool = Field(
        False, description="dev mode (loopback only): demo API and /docs on, secrets generated"
    )

    # access control (docs/security.md)
    token_secret: str = Field("", description="HS256 secret, or kid:secret entries (first mints)")
    token_public_keys: Path | None = Field(None, description="PEM file of RS256/ES256 keys")
    token_jwks_url: str | None = Field(None, description="JWKS of an identity provider")
    token_jwks_refresh: float = Field(300.0, ge=1, description="JWKS refetch period, s")
    token_max_ttl: int = Field(
        TOKEN_TTL_CEILING, ge=1, le=TOKEN_TTL_CEILING, description="longest token lifetime, s"
    )
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="API keys: <name>:<secret>:<scopes>[:rate=<n>/s], comma-separated",
    )
    api_keys_file: Path | None = Field(None, description="API key entries, one per line")
    internal_tls_cert: Path | None = Field(None, description="internal API over HTTPS: cert")
    internal_tls_key: Path | None = Field(None, description="internal API over HTTPS: key")
    internal_tls_client_ca: Path | None = Field(None, description="require client certs (mTLS)")
    ca_file: Path | None = Field(None, description="CA bundle to trust for https:// API URLs")
    client_cert: Path | None = Field(None, description="client certificate for mTLS (CLI, canary)")
    client_key: Path | None = Field(None, description="its private key")

    # acks: when a delivery is due, and when the monitor calls it lost (docs/monitoring.md)
    ack_timeout: float = Field(10.0, gt=0, description="seconds before redelivery")
    max_attempts: int = Field(5, ge=1, description="writes before closing with 4011")
    monitor_grace: float = Field(10.0, ge=0, description="added to every deadline, s")
    reconnect_window: float = Field(60.0, ge=0, description="a device's time to come back, s")
    late_check: float = Field(120.0, ge=0, description="the last look at a bucket comes this late")

    log_level: str = Field("INFO", description="log level")

    @field_validator(
        "token_public_keys",
        "token_jwks_url",
        "api_keys_file",
        "internal_tls_cert",
        "internal_tls_key",
        "internal_tls_client_ca",
        "ca_file",
        "client_cert",
        "client_key",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        return _split(value)

    @model_validator(mode="after")
    def _check_tls(self) -> Self:
        if (self.internal_tls_cert is None) != (self.internal_tls_key is None):
            raise ValueError("internal_tls_cert and internal_tls_key go together")
        if self.internal_tls_client_ca is not None and self.internal_tls_cert is None:
            raise ValueError("internal_tls_client_ca needs internal_tls_cert and internal_tls_key")
        return self

    @classmethod
    def sharing(cls, other: SharedSettings, **fields: Any) -> Self:
        """These settings from ``PUSHSVC_*`` env and ``fields``, with every shared field taken
        from ``other`` (the embedded monitor's, from its node's: flags and ``--dev`` secrets
        included)."""
        shared = {name: getattr(other, name) for name in SharedSettings.model_fields}
        return cls(**(shared | fields))

    def client_tls(self) -> ssl.SSLContext:
        """The TLS context of this process's clients of the internal API (CLI, canary)."""
        return client_context(self.ca_file, self.client_cert, self.client_key)

    @property
    def internal_scheme(self) -> str:
        """``https`` when the internal API is served over TLS (or a CA to trust is given)."""
        return "https" if self.internal_tls_cert or self.ca_file else "http"

    def api_key_entries(self) -> list[str]:
        """``api_keys`` then the lines of ``api_keys_file``. Raises :class:`ConfigError` when
        the file cannot be read."""
        entries = list(self.api_keys)
        if self.api_keys_file is not None:
            try:
                entries += self.api_keys_file.read_text().splitlines()
            except OSError as exc:
                raise ConfigError(f"cannot read PUSHSVC_API_KEYS_FILE: {exc.strerror}") from None
        return [e.strip() for e in entries if e.strip() and not e.strip().startswith("#")]

    def require_secrets(self) -> None:
        """Raise :class:`ConfigError` unless a token secret and an API key are set.

        ``--dev`` fills both in before this is called (see ``cli/serve.py``). Outside ``--dev``
        an API key secret shorter than 24 characters is refused (a node also refuses ``--dev``
        on an address that is not loopback: :meth:`NodeSettings.require_secrets`).
        """
        entries = self.api_key_entries()
        missing = []
        if not self.token_secret:
            missing.append("PUSHSVC_TOKEN_SECRET")
        if not entries:
            missing.append("PUSHSVC_API_KEYS (or PUSHSVC_API_KEYS_FILE)")
        if missing:
            raise ConfigError(
                "pushsvc needs " + " and ".join(missing) + "; for a local try-out use --dev"
            )
        kids = [kid for kid, _ in token_secrets(self.token_secret) if kid is not None]
        if any(not _KID.match(kid) for kid in kids) or len(kids) != len(set(kids)):
            raise ConfigError(
                "PUSHSVC_TOKEN_SECRET: each kid:secret entry needs its own kid "
                "(1-64 of A-Z a-z 0-9 _ . -)"
            )
        if self.token_jwks_url and not _trusted_url(self.token_jwks_url):
            raise ConfigError(
                "PUSHSVC_TOKEN_JWKS_URL must be https:// (plain http only on a loopback address): "
                "whoever can change the keys can sign tokens for any patient"
            )
        for kid, secret in token_secrets(self.token_secret):
            if len(secret) < 32:
                which = f" (kid {kid!r})" if kid else ""
                raise ConfigError(
                    f"PUSHSVC_TOKEN_SECRET{which} must be at least 32 characters (HS256)"
                )
        if self.token_public_keys is not None:
            load_pem_keys(self.token_public_keys)
        weak = [e.key.name for e in parse_entries(entries) if e.key.weak]
        if weak and not self.dev:
            raise ConfigError(
                f"API key {weak[0]!r} is shorter than {MIN_SECRET_LENGTH} characters; "
                "generate one with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )


class NodeSettings(SharedSettings):
    """A node's settings (``pushsvc serve``): the shared ones and its listeners, protocol timing,
    limits and what reaches closed pages."""

    # listeners and identity
    host: str = Field("127.0.0.1", description="client listener address")
    port: int = Field(8080, ge=0, le=65535, description="client listener (WebSocket, demo)")
    internal_port: int = Field(8081, ge=0, le=65535, description="internal API listener")
    internal_host: str = Field("127.0.0.1", description="internal API address")
    node_id: str = Field(
        default_factory=opaque_node_id, description="node id (default: node-<random>)"
    )
    allow_redis_eviction: bool = Field(
        False, description="start even if Redis may evict keys (silent loss)"
    )
    workers: int = Field(1, ge=1, le=64, description="node processes sharing the client port")
    max_connections: int = Field(
        default_factory=default_max_connections,
        ge=1,
        description="sessions per node (default: the open-files limit less 64)",
    )
    reuse_port: bool = Field(False, description="bind the client port with SO_REUSEPORT")
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="origins the WebSocket upgrade accepts, comma-separated (empty: any)",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="origins whose pages may read /client/pushsvc.js (CORS); empty: none, *: any",
    )
    docs: bool = Field(False, description="serve /docs and /openapi.json (on in --dev)")

    # protocol timing (seconds)
    heartbeat: float = Field(25.0, gt=0, description="seconds between server pings")
    hello_timeout: float = Field(10.0, gt=0, description="seconds to wait for hello")
    drain_timeout: float = Field(10.0, ge=0, description="seconds to wait on drain")

    # limits
    default_ttl: int = Field(86_400, ge=1, description="message ttl when a publish gives none")
    outbox_cap: int = Field(1 << 20, ge=1024, description="bytes buffered per session")
    outbox_grace: float = Field(5.0, ge=0, description="seconds a session may stay over the cap")
    max_frame_size: int = Field(64 * 1024, ge=256, description="largest client frame, bytes")
    max_body_size: int = Field(1 << 20, ge=1024, description="largest HTTP body, bytes")
    max_message_size: int = Field(64 * 1024, ge=16, description="largest encoded data, bytes")
    client_frame_rate: float = Field(50.0, gt=0, description="client frames per second")
    client_frame_burst: int = Field(200, ge=1, description="client frame burst")
    max_pending_per_address: int = Field(
        1000,
        ge=1,
        description="connections one source address may hold before their hello (more: 429)",
    )
    token_ttl: int = Field(3600, ge=1, description="default token lifetime, s")
    ledger_flush_interval: float = Field(0.05, gt=0, description="accounting flush, s")

    # reaching closed pages: Web Push escalation and webhooks (docs/escalation.md)
    vapid_private_key: Path | None = Field(None, description="VAPID private key, PEM file")
    vapid_subject: str = Field("", description="VAPID contact, mailto: or https: URL")
    escalate_after: int | None = Field(
        None, ge=1, description="message.unacked this long after publish when no push.after, s"
    )
    webhook_urls: Annotated[list[str], NoDecode] = Field(default_factory=list)
    webhook_secret: str = Field("", description="signs every webhook (Pushsvc-Signature)")
    escalation_lease: float = Field(
        30.0, ge=0.5, description="a claimed escalation or webhook is hidden this long, s"
    )

    # game days: POST /v1/admin/faults is refused unless this is on (docs/runbooks.md)
    enable_fault_injection: bool = Field(
        False, description="accept POST /v1/admin/faults (game days only)"
    )

    # paths
    static_dir: Path = Field(
        default_factory=lambda: asset_dir("client"),
        description="browser client and demo files (default: the shipped ones)",
    )
    metrics: bool = Field(True, description="record metrics (off only to measure their cost)")

    @field_validator("allowed_origins", "cors_origins", "webhook_urls", mode="before")
    @classmethod
    def _split_lists(cls, value: object) -> object:
        return _split(value)

    @field_validator("cors_origins")
    @classmethod
    def _exact_origins(cls, value: list[str]) -> list[str]:
        if "*" in value and len(value) > 1:
            raise ValueError("'*' (any origin) stands alone, without other origins")
        for origin in value:
            if origin != "*" and not _is_origin(origin):
                raise ValueError(
                    f"{origin[:100]!r} is not a web origin: scheme://host[:port], no path"
                )
        return value

    @field_validator("vapid_private_key", "escalate_after", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.port and self.internal_port and self.port == self.internal_port:
            raise ValueError("port and internal_port must differ")
        if self.token_ttl > self.token_max_ttl:
            raise ValueError("token_ttl must not exceed token_max_ttl")
        if self.webhook_urls and not self.webhook_secret:
            raise ValueError("webhook_urls need a webhook_secret to sign with")
        for url in self.webhook_urls:
            if not url.startswith(("https://", "http://")):
                raise ValueError(f"webhook url {url!r} is not an http(s) URL")
        return self

    @functools.cached_property
    def origins(self) -> frozenset[bytes]:
        """``allowed_origins`` as the WebSocket upgrade compares them (empty: any origin)."""
        return frozenset(normal_origin(o.encode()) for o in self.allowed_origins)

    @functools.cached_property
    def cors(self) -> frozenset[bytes]:
        """``cors_origins`` as :mod:`pushsvc.http.cors` compares them (empty: no CORS)."""
        return frozenset(normal_origin(o.encode()) for o in self.cors_origins)

    def require_secrets(self) -> None:
        """The shared check (:meth:`SharedSettings.require_secrets`), then
        :meth:`check_dev_host`."""
        super().require_secrets()
        self.check_dev_host()

    def check_dev_host(self) -> None:
        """Raise :class:`ConfigError` when ``--dev`` would listen on a non-loopback address."""
        if self.dev and not _loopback(self.host):
            raise ConfigError(f"--dev only listens on a loopback address, not --host {self.host}")


#: The node's settings by the name most of the package knows them by.
Settings = NodeSettings


class MonitorSettings(SharedSettings):
    """The monitor's settings (``pushsvc monitor``, docs/monitoring.md): the shared ones and its
    listener, schedule and alerting."""

    alertmanager_url: str | None = Field(None, description="Alertmanager base URL (v2 API)")
    monitor_host: str = Field("127.0.0.1", description="monitor /metrics, /healthz address")
    monitor_port: int = Field(9464, ge=0, le=65535, description="monitor /metrics, /healthz")
    monitor_id: str = Field(
        default_factory=default_node_id, description="this monitor's id (default: hostname:pid)"
    )
    monitor_interval: float = Field(5.0, ge=0.2, description="reconciliation period, s")
    loss_window: float = Field(300.0, gt=0, description="a loss keeps its alert this long, s")
    canary_interval: float = Field(5.0, ge=0.2, description="canary publish period, s")
    canary_stall: float = Field(20.0, gt=0, description="no canary for this long: stalled, s")
    alert_resend: float = Field(60.0, ge=0.2, description="re-send active alerts every, s")
    lease_ttl: float = Field(15.0, ge=0.5, description="the active monitor's lease, s")
    runbook_base_url: str = Field(
        RUNBOOK_PLACEHOLDER,
        description="where docs/ is published (e.g. https://git.example.org/pushsvc/blob/v0.1.0/"
        "docs): each alert's runbook link is <URL>/runbooks.md#<alert>",
    )


def _split(value: object) -> object:
    """A comma-separated list (from the environment) as its items."""
    if isinstance(value, str):
        return [k.strip() for k in value.split(",") if k.strip()]
    return value


_KID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def _trusted_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme == "https" or (parts.scheme == "http" and _loopback(parts.hostname or ""))


def _is_origin(text: str) -> bool:
    """``http(s)://host[:port]`` (a trailing ``/`` aside): what a browser sends as ``Origin``."""
    try:
        parts = urlsplit(text)
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        return False
    return (
        parts.scheme.lower() in ("http", "https")
        and bool(parts.hostname)
        and port_ok
        and parts.path in ("", "/")
        and not (parts.query or parts.fragment or parts.username or parts.password)
        and "?" not in text
        and "#" not in text
    )


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
