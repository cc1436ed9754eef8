"""``rediss://`` against a redis-server that speaks only TLS and requires client certificates:
the URL's ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile`` and ``ssl_cert_reqs`` reach both
connections of a node (the command connection and the bus subscriber's)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from pushsvc.broker.base import Placed, Publication
from pushsvc.brokers import redis_broker
from pushsvc.errors import BrokerUnavailable
from pushsvc.settings import Settings
from tests.redis_topology import Certificates, RedisProcess, start_tls_redis
from tests.support import UNIT
from tests.test_broker_contract import Recorder, message

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def tls_redis() -> Iterator[tuple[RedisProcess, Certificates]]:
    with start_tls_redis() as started:
        yield started


async def test_every_connection_speaks_tls_with_the_urls_certificates(
    tls_redis: tuple[RedisProcess, Certificates],
) -> None:
    server, certs = tls_redis
    url = (
        f"rediss://127.0.0.1:{server.port}/0?ssl_ca_certs={certs.ca}"
        f"&ssl_certfile={certs.client}&ssl_keyfile={certs.client_key}"
    )
    seen = Recorder()
    broker = redis_broker(Settings(redis_url=url, node_id="tls"), timeout=UNIT)
    broker.bus.subscribe(seen.envelope, seen.command, seen.resync)
    await broker.start()
    try:
        assert broker.up  # the subscriber connected, with the client certificate
        await broker.bus.follow(["user:tls"])
        sent = message()
        [placed] = await broker.publish([Publication(sent, ["user:tls"])], "tls")
        assert isinstance(placed, Placed)
        await seen.until(lambda: [e.message.id for e in seen.envelopes] == [sent.id])
    finally:
        await broker.close()


@pytest.mark.parametrize(
    "query",
    [
        "ssl_ca_certs={ca}",  # no client certificate: the server hangs up
        "ssl_ca_certs={other}&ssl_certfile={cert}&ssl_keyfile={key}",  # the server is not trusted
    ],
)
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_without_the_right_certificates_nothing_connects(
    tls_redis: tuple[RedisProcess, Certificates], query: str
) -> None:
    # A TLS handshake the server ends (no client certificate) can leave redis-py's transport to
    # be closed by the collector: collected here (below), where its ResourceWarning is expected,
    # rather than during whichever test runs next.
    server, certs = tls_redis
    filled = query.format(
        ca=certs.ca, other=certs.other_ca, cert=certs.client, key=certs.client_key
    )
    broker = redis_broker(
        Settings(redis_url=f"rediss://127.0.0.1:{server.port}/0?{filled}", node_id="tls"),
        timeout=0.5 * UNIT,
    )
    broker.bus.subscribe(Recorder().envelope, Recorder().command)
    await broker.start()
    try:
        assert not broker.up
        with pytest.raises(BrokerUnavailable):
            await broker.publish([Publication(message(), ["user:tls"])], "tls")
    finally:
        await broker.close()
        gc.collect()


async def test_cert_reqs_none_skips_the_servers_verification(
    tls_redis: tuple[RedisProcess, Certificates],
) -> None:
    server, certs = tls_redis
    url = (
        f"rediss://127.0.0.1:{server.port}/0?ssl_ca_certs={certs.other_ca}&ssl_cert_reqs=none"
        f"&ssl_certfile={certs.client}&ssl_keyfile={certs.client_key}"
    )
    broker = redis_broker(Settings(redis_url=url, node_id="tls"), timeout=UNIT)
    broker.bus.subscribe(Recorder().envelope, Recorder().command)
    await broker.start()
    try:
        assert broker.up
        [placed] = await broker.publish([Publication(message(), ["user:tls"])], "tls")
        assert isinstance(placed, Placed)
    finally:
        await broker.close()
