"""The pure core: no I/O, no clocks (``now`` is an argument), no asyncio, redis, fastapi,
prometheus_client or opentelemetry. Everything here is tested with tables."""
