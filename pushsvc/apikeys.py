"""Internal API keys: named, scoped, optionally rate-limited (pure: no I/O).

An entry (``PUSHSVC_API_KEYS``, comma-separated, or ``PUSHSVC_API_KEYS_FILE``, one per line) is

    name:secret:scopes[:rate=<n>/s]

with ``scopes`` joined by ``+`` from ``publish``, ``tokens``, ``read``, ``admin`` or ``*`` (all of
them), e.g. ``pharmacy:Zt6…:publish:rate=50/s``. A bare ``secret`` entry has every scope; its
name is a short digest of the secret (:func:`digest_name`), so logs can tell keys apart without
showing one.

:class:`KeyRing` keeps only the SHA-256 digest of each secret and compares digests with
:func:`hmac.compare_digest`; :meth:`KeyRing.authenticate` turns an ``Authorization`` header
(``Bearer``, any case) into the :class:`ApiKey` it names, or None.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import hmac
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pushsvc.errors import ConfigError

#: Outside ``--dev`` a shorter secret is refused at start.
MIN_SECRET_LENGTH = 24


class Scope(enum.StrEnum):
    PUBLISH = "publish"  # POST /v1/messages, /v1/messages/batch
    TOKENS = "tokens"  # POST /v1/tokens
    READ = "read"  # GET trails, sessions, nodes, stats
    ADMIN = "admin"  # kick, drain, revoke, faults


ALL_SCOPES = frozenset(Scope)
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_RATE = re.compile(r"^rate=([0-9]+(?:\.[0-9]+)?)/s$")


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One key: who it is (``name``), what it may do, how often it may publish (per second,
    None: no limit). ``digest`` is the SHA-256 of its secret; the secret itself is not kept."""

    name: str
    scopes: frozenset[Scope]
    rate: float | None
    digest: bytes
    bare: bool = False  # given as a bare secret: every scope, named by digest
    weak: bool = False  # the secret is shorter than MIN_SECRET_LENGTH

    def allows(self, scope: Scope) -> bool:
        return scope in self.scopes


@dataclass(frozen=True, slots=True)
class Entry:
    """A parsed entry, secret included: what a client of the API (CLI, canary) sends."""

    key: ApiKey
    secret: str


def digest_name(secret: str) -> str:
    """The name of an unnamed key: ``key-`` and 8 hex digits of its secret's SHA-256."""
    return "key-" + hashlib.sha256(secret.encode()).hexdigest()[:8]


def parse_entry(entry: str) -> Entry:
    """One entry (see the module docstring). Raises :class:`ConfigError` saying what is wrong,
    without repeating the secret."""
    text = entry.strip()
    parts = text.split(":")
    if len(parts) == 1:
        secret = parts[0]
        if not secret:
            raise ConfigError("an API key entry is empty")
        key = ApiKey(
            digest_name(secret),
            ALL_SCOPES,
            None,
            _digest(secret),
            bare=True,
            weak=len(secret) < MIN_SECRET_LENGTH,
        )
        return Entry(key, secret)
    if len(parts) not in (3, 4):
        raise ConfigError(
            f"API key entry {_shown(parts[0])!r}: expected name:secret:scopes[:rate=<n>/s]"
        )
    name, secret, scope_text = parts[:3]
    if not _NAME.match(name):
        raise ConfigError(f"API key name {_shown(name)!r}: use 1-64 of A-Z a-z 0-9 _ . -")
    if not secret:
        raise ConfigError(f"API key {name!r} has an empty secret")
    scopes: set[Scope] = set()
    for word in scope_text.split("+"):
        if word == "*":
            scopes |= ALL_SCOPES
        elif word in Scope.__members__.values():
            scopes.add(Scope(word))
        else:
            allowed = ", ".join([*Scope, "*"])
            raise ConfigError(f"API key {name!r}: unknown scope {word[:32]!r} (use {allowed})")
    rate = None
    if len(parts) == 4:
        found = _RATE.match(parts[3])
        if found is None or float(found[1]) <= 0:
            raise ConfigError(f"API key {name!r}: the rate must look like rate=50/s")
        rate = float(found[1])
    key = ApiKey(
        name, frozenset(scopes), rate, _digest(secret), weak=len(secret) < MIN_SECRET_LENGTH
    )
    return Entry(key, secret)


def parse_entries(entries: Iterable[str]) -> list[Entry]:
    """Every non-blank entry that is not a ``#`` comment; names and secrets must be unique."""
    parsed = [parse_entry(e) for e in entries if e.strip() and not e.strip().startswith("#")]
    names: set[str] = set()
    digests: dict[bytes, str] = {}
    for entry in parsed:
        key = entry.key
        if key.name in names:
            raise ConfigError(f"API key name {key.name!r} is given twice")
        if key.digest in digests:
            raise ConfigError(f"API keys {digests[key.digest]!r} and {key.name!r} share a secret")
        names.add(key.name)
        digests[key.digest] = key.name
    return parsed


def secret_for(entries: Iterable[str], *scopes: Scope) -> str | None:
    """The secret of the first entry whose key has every one of ``scopes`` (what a client of
    the API, the CLI or the canary, sends), or None."""
    for entry in parse_entries(entries):
        if all(entry.key.allows(s) for s in scopes):
            return entry.secret
    return None


def bearer(header: str | None) -> str | None:
    """The credential of an ``Authorization: Bearer <credential>`` header (scheme in any case)."""
    if not header:
        return None
    scheme, _, credential = header.strip().partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential:
        return None
    return credential


class KeyRing:
    """The keys a node accepts."""

    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self.keys = tuple(keys)

    @classmethod
    def parse(cls, entries: Iterable[str]) -> KeyRing:
        return cls(e.key for e in parse_entries(entries))

    def authenticate(self, header: str | None) -> ApiKey | None:
        """The key an ``Authorization`` header names, or None. Every key's digest is compared
        (in constant time), so the time taken does not tell which one came close."""
        credential = bearer(header)
        if credential is None:
            return None
        given = _digest(credential)
        found = None
        for key in self.keys:
            if hmac.compare_digest(given, key.digest):
                found = key
        return found

    def caller_name(self, header: str | None) -> str | None:
        """The name of the key an ``Authorization`` header names (None: no such key)."""
        key = self.authenticate(header)
        return key.name if key is not None else None


def caller_name(header: str | None, api_keys: Sequence[str]) -> str | None:
    """The name of the key an ``Authorization`` header names among the entries ``api_keys``, or
    None. Behind the gate the key is at hand already: ``request.state.api_key`` (ASGI
    ``scope["state"]["api_key"]``)."""
    return _ring(tuple(api_keys)).caller_name(header)


@functools.lru_cache(maxsize=8)
def _ring(entries: tuple[str, ...]) -> KeyRing:
    return KeyRing.parse(entries)


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _shown(text: str) -> str:
    """At most the first 16 characters of what may be a secret pasted in the wrong place."""
    return text[:16] if _NAME.match(text) else "<not a name>"
