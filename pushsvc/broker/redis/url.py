"""The Redis a node talks to, read from one URL: the only place a Redis URL is parsed.

Three forms, each with ``user:password@`` optional (``:password@`` alone for a password)::

    redis://host:port[/db]        rediss://host:port[/db]?ssl_ca_certs=…&ssl_certfile=…
    redis+sentinel://host:port[,host:port…]/<master>[/db][?sentinel_password=…]
    redis+cluster://host:port[,host:port…]

``rediss`` (and ``rediss+sentinel``) speak TLS on every connection of the node, with the query's
``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile`` and ``ssl_cert_reqs`` (``none``,
``optional``, ``required``; default ``required``). ``unix:///path[?db=n]`` reaches a local
socket. For Sentinel the user and password are the data nodes'; ``sentinel_password`` is the
sentinels' own (default: none). A bad URL raises :class:`pushsvc.errors.ConfigError`.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

from pushsvc.errors import ConfigError

Mode = Literal["standalone", "sentinel", "cluster"]
Address = tuple[str, int]

DEFAULT_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379
_SCHEMES: dict[str, tuple[Mode, bool]] = {
    "redis": ("standalone", False),
    "rediss": ("standalone", True),
    "unix": ("standalone", False),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
}
_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
_TLS_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs")
_OPTIONS = frozenset({*_TLS_OPTIONS, "sentinel_password", "db"})


@dataclass(frozen=True)
class Tls:
    """TLS options of every connection (paths as given; ``cert_reqs`` as named)."""

    ca_certs: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    cert_reqs: str = "required"

    @property
    def check_hostname(self) -> bool:
        """Whether the server's certificate must name the host connected to (with
        ``cert_reqs=required``: behind Sentinel, which hands out IPs, certificates need IP
        subject alternative names)."""
        return self.cert_reqs == "required"

    def context(self) -> ssl.SSLContext:
        """A client context with these options."""
        context = ssl.create_default_context(cafile=self.ca_certs)
        context.check_hostname = self.check_hostname
        context.verify_mode = _CERT_REQS[self.cert_reqs]
        if self.certfile is not None:
            context.load_cert_chain(self.certfile, self.keyfile)
        return context


@dataclass(frozen=True)
class Target:
    """Where the node's Redis is and how to log in. ``addresses``: the server (standalone), the
    sentinels, or the cluster's seed nodes."""

    mode: Mode
    addresses: tuple[Address, ...] = ()
    path: str | None = None
    username: str | None = None
    password: str | None = None
    db: int = 0
    master: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    tls: Tls | None = None

    def connection_kwargs(self, address: Address) -> dict[str, Any]:
        """redis-py ``Connection`` keyword arguments for the data node at ``address``."""
        kwargs: dict[str, Any] = {
            "host": address[0],
            "port": address[1],
            "username": self.username,
            "password": self.password,
            "db": self.db,
        }
        if self.tls is not None:
            kwargs |= {
                "ssl_ca_certs": self.tls.ca_certs,
                "ssl_certfile": self.tls.certfile,
                "ssl_keyfile": self.tls.keyfile,
                "ssl_cert_reqs": self.tls.cert_reqs,
                "ssl_check_hostname": self.tls.check_hostname,
            }
        return kwargs


def parse(url: str) -> Target:
    """The :class:`Target` ``url`` names. Raises :class:`ConfigError` when it names none."""
    parts = urlsplit(url)
    if parts.scheme not in _SCHEMES:
        schemes = "redis://, rediss://, redis+sentinel://, redis+cluster:// or unix://"
        raise ConfigError(f"unsupported redis url scheme {parts.scheme!r} ({schemes})")
    mode, secure = _SCHEMES[parts.scheme]
    query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    unknown = sorted(set(query) - _OPTIONS)
    if unknown:
        raise ConfigError(f"unknown redis url option {unknown[0]!r}")
    tls = _tls(query) if secure else None
    if not secure and any(option in query for option in _TLS_OPTIONS):
        raise ConfigError(f"TLS options need a rediss scheme, not {parts.scheme!r}")
    credentials, _, hosts = parts.netloc.rpartition("@")
    username, password = _credentials(credentials)
    segments = [unquote(s) for s in parts.path.split("/")[1:] if s]
    if parts.scheme == "unix":
        if not parts.path or hosts:
            raise ConfigError("a unix redis url is unix:///path/to/socket[?db=n]")
        db = _db(query.get("db", "0"))
        return Target("standalone", (), parts.path, username, password, db, tls=tls)
    if "db" in query:
        raise ConfigError("name the database in the path: redis://host:port/<db>")
    default_port = DEFAULT_SENTINEL_PORT if mode == "sentinel" else DEFAULT_PORT
    addresses = tuple(_address(h, default_port) for h in hosts.split(",")) if hosts else ()
    if not addresses:
        raise ConfigError(f"no host in redis url {_redacted(url, password)!r}")
    if mode == "standalone" and len(addresses) > 1:
        raise ConfigError("several hosts need redis+sentinel:// or redis+cluster://")
    master: str | None = None
    if mode == "sentinel":
        if not segments:
            raise ConfigError("a sentinel url names its master: redis+sentinel://h:p/<master>")
        master, segments = segments[0], segments[1:]
    if mode == "cluster" and segments:
        raise ConfigError("a cluster has only database 0: redis+cluster://host:port[,…]")
    if len(segments) > 1:
        raise ConfigError(f"unexpected path in redis url: /{'/'.join(segments)}")
    db = _db(segments[0]) if segments else 0
    sentinel_password = query.get("sentinel_password")
    if sentinel_password is not None and mode != "sentinel":
        raise ConfigError("sentinel_password is an option of redis+sentinel:// urls")
    return Target(mode, addresses, None, username, password, db, master, sentinel_password, tls)


def _tls(query: dict[str, str]) -> Tls:
    reqs = query.get("ssl_cert_reqs", "required").lower()
    if reqs not in _CERT_REQS:
        raise ConfigError(f"ssl_cert_reqs must be none, optional or required, not {reqs!r}")
    ca, cert, key = (query.get(option) for option in _TLS_OPTIONS[:3])
    return Tls(ca, cert, key, reqs)


def _credentials(text: str) -> tuple[str | None, str | None]:
    """``(username, password)`` of ``user:password``, ``:password`` or ``password``."""
    if not text:
        return None, None
    user, colon, secret = text.partition(":")
    if not colon:  # redis://secret@host: a password alone, as redis-py reads it
        return None, unquote(user)
    return unquote(user) or None, unquote(secret)


def _address(text: str, default_port: int) -> Address:
    if text.startswith("["):  # [v6 address]:port
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":")
    else:
        host, _, port = text.partition(":")
    port = port or str(default_port)
    if not host:
        raise ConfigError(f"empty host in redis url address {text!r}")
    try:
        number = int(port)
    except ValueError:
        raise ConfigError(f"bad port in redis url address {text!r}") from None
    if not 0 < number < 65536:
        raise ConfigError(f"bad port in redis url address {text!r}")
    return host, number


def _db(text: str) -> int:
    try:
        db = int(text)
    except ValueError:
        raise ConfigError(f"the redis database is a number, not {text!r}") from None
    if db < 0:
        raise ConfigError(f"the redis database is a number >= 0, not {db}")
    return db


def _redacted(url: str, password: str | None) -> str:
    return url.replace(password, "***") if password else url
