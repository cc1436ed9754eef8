"""The Redis URL forms, table-tested against the one parser (pushsvc.broker.redis.url)."""

from __future__ import annotations

import os
import ssl
import subprocess

import pytest

from pushsvc.broker.keys import key_slot
from pushsvc.broker.redis.url import Target, Tls, parse
from pushsvc.errors import ConfigError
from tests.support import API_KEY, ROOT, TOKEN_SECRET, UNIT, pushsvc_command

GOOD: list[tuple[str, Target]] = [
    ("redis://127.0.0.1:6379/0", Target("standalone", (("127.0.0.1", 6379),))),
    ("redis://localhost", Target("standalone", (("localhost", 6379),))),
    ("redis://h:7000/3", Target("standalone", (("h", 7000),), db=3)),
    ("redis://:s3cret@h:1/2", Target("standalone", (("h", 1),), password="s3cret", db=2)),
    ("redis://s3cret@h:1", Target("standalone", (("h", 1),), password="s3cret")),
    ("redis://app:p%40ss@h:1", Target("standalone", (("h", 1),), username="app", password="p@ss")),
    ("redis://[::1]:6380", Target("standalone", (("::1", 6380),))),
    ("rediss://h:6380/1", Target("standalone", (("h", 6380),), db=1, tls=Tls())),
    (
        "rediss://h:6380?ssl_ca_certs=/ca.pem&ssl_certfile=/c.pem&ssl_keyfile=/k.pem&ssl_cert_reqs=none",
        Target("standalone", (("h", 6380),), tls=Tls("/ca.pem", "/c.pem", "/k.pem", "none")),
    ),
    ("unix:///run/redis.sock?db=2", Target("standalone", path="/run/redis.sock", db=2)),
    (
        "redis+sentinel://s1:26379,s2:26380,s3/mymaster",
        Target("sentinel", (("s1", 26379), ("s2", 26380), ("s3", 26379)), master="mymaster"),
    ),
    (
        "redis+sentinel://u:pw@s1:1/mymaster/4?sentinel_password=sp",
        Target(
            "sentinel",
            (("s1", 1),),
            username="u",
            password="pw",
            db=4,
            master="mymaster",
            sentinel_password="sp",
        ),
    ),
    (
        "rediss+sentinel://s1:1/m?ssl_cert_reqs=optional",
        Target("sentinel", (("s1", 1),), master="m", tls=Tls(cert_reqs="optional")),
    ),
    (
        "redis+cluster://a:7000,b:7001",
        Target("cluster", (("a", 7000), ("b", 7001))),
    ),
]

BAD: list[tuple[str, str]] = [
    ("http://h:1", "unsupported redis url scheme"),
    ("redis://", "no host"),
    ("redis://h:port", "bad port"),
    ("redis://h:70000", "bad port"),
    ("redis://h:1/x", "database is a number"),
    ("redis://h:1/0/1", "unexpected path"),
    ("redis://a:1,b:2", "several hosts"),
    ("redis://h:1?ssl_ca_certs=/ca.pem", "TLS options need a rediss scheme"),
    ("rediss://h:1?ssl_cert_reqs=maybe", "ssl_cert_reqs must be"),
    ("redis://h:1?timeout=3", "unknown redis url option"),
    ("redis://h:1?db=3", "name the database in the path"),
    ("redis+sentinel://s1:1", "names its master"),
    ("redis+cluster://a:1/2", "only database 0"),
    ("redis://h:1?sentinel_password=x", "sentinel_password is an option"),
    ("unix://host/path", "unix:///path"),
]


@pytest.mark.parametrize(("url", "expected"), GOOD, ids=[u for u, _ in GOOD])
def test_url_forms(url: str, expected: Target) -> None:
    assert parse(url) == expected


@pytest.mark.parametrize(("url", "error"), BAD, ids=[u for u, _ in BAD])
def test_bad_urls_say_what_is_wrong(url: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        parse(url)


def test_a_password_is_not_repeated_in_errors() -> None:
    with pytest.raises(ConfigError) as caught:
        parse("redis+sentinel://:hunter2@/m")
    assert "hunter2" not in str(caught.value)


def test_tls_options_reach_the_context_and_the_subscriber() -> None:
    target = parse("rediss://h:1?ssl_cert_reqs=none")
    assert target.tls is not None
    assert target.tls.context().verify_mode == ssl.CERT_NONE
    assert parse("rediss://h:1").tls.context().verify_mode == ssl.CERT_REQUIRED  # type: ignore[union-attr]
    kwargs = target.connection_kwargs(("10.0.0.1", 7))
    assert (kwargs["host"], kwargs["port"], kwargs["ssl_cert_reqs"]) == ("10.0.0.1", 7, "none")
    assert "ssl_cert_reqs" not in parse("redis://h:1").connection_kwargs(("h", 1))


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("redis+sentinel://127.0.0.1:26379", "a sentinel url names its master"),
        ("redis://127.0.0.1:1?ssl_ca_certs=/ca.pem", "TLS options need a rediss scheme"),
    ],
)
def test_serve_refuses_a_url_it_cannot_use_in_one_line(url: str, error: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHSVC_")}
    env |= {
        "PUSHSVC_TOKEN_SECRET": TOKEN_SECRET,
        "PUSHSVC_API_KEYS": API_KEY,
        "PUSHSVC_MAX_CONNECTIONS": "100",
        "COLUMNS": "300",
    }
    done = subprocess.run(
        [*pushsvc_command(), "serve", "--redis-url", url],
        check=False,
        env=env,
        cwd=ROOT,
        capture_output=True,
        timeout=30 * UNIT,
    )
    assert done.returncode == 2
    assert f"error: invalid redis url: {error}" in done.stderr.decode()
    assert "Traceback" not in done.stderr.decode()


@pytest.mark.parametrize(
    ("key", "slot"),
    [
        ("somekey", 11058),  # as CLUSTER KEYSLOT answers
        ("foo", 12182),
        ("{user1000}.following", key_slot("user1000")),  # the hash tag decides
        ("{pushsvc:}stream:user:a", key_slot("pushsvc:")),
    ],
)
def test_key_slot(key: str, slot: int) -> None:
    assert key_slot(key) == slot
