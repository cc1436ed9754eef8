"""A process's settings mapped onto the broker it uses: the one place that knows both.

The brokers take explicit parameters and never read settings; the edge (``pushsvc serve``, the
monitor, the operator commands, the tests) builds its broker here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pushsvc.broker.base import Broker
from pushsvc.broker.memory import MemoryBroker
from pushsvc.errors import ConfigError
from pushsvc.settings import SharedSettings

if TYPE_CHECKING:
    from pushsvc.broker.redis import RedisBroker


def make_broker(settings: SharedSettings) -> Broker:
    """The Redis broker when ``redis_url`` is set, else the in-memory one (a single node)."""
    if settings.redis_url:
        return redis_broker(settings)
    return MemoryBroker(
        history_size=settings.history_size,
        history_ttl=settings.history_ttl,
        push_retention=settings.push_retention,
    )


def redis_broker(
    settings: SharedSettings,
    *,
    prefix: str | None = None,
    ledger_retention: float = 3600,
    timeout: float = 1.0,
) -> RedisBroker:
    """The :class:`RedisBroker` of ``settings`` (``prefix``: instead of ``redis_prefix``).
    Raises :class:`ConfigError` without a ``redis_url``, or when it names no Redis."""
    from pushsvc.broker.redis import RedisBroker  # noqa: PLC0415 - only clusters need redis

    if not settings.redis_url:
        raise ConfigError("the Redis broker needs a redis_url")
    return RedisBroker(
        settings.redis_url,
        prefix=settings.redis_prefix if prefix is None else prefix,
        min_replicas=settings.redis_min_replicas,
        history_size=settings.history_size,
        history_ttl=settings.history_ttl,
        idempotency_ttl=settings.idempotency_ttl,
        node_ttl=settings.registry_interval * 3,
        push_retention=settings.push_retention,
        ledger_retention=ledger_retention,
        timeout=timeout,
    )
