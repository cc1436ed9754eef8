"""Client tokens (HS256 JWTs) and internal API keys.

A client token names its patient in ``sub`` and may list ``topics``; it must carry ``exp``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
from dataclasses import dataclass
from typing import TypeGuard

import jwt
import orjson

from pushsvc.core.streams import MAX_TOPICS, valid_name
from pushsvc.errors import AuthError

ALGORITHM = "HS256"


@dataclass(frozen=True, slots=True)
class Claims:
    user: str
    topics: tuple[str, ...]
    expires: int


class TokenIssuer:
    """Mints and verifies client tokens with one shared secret."""

    def __init__(self, secret: str) -> None:
        self._secret = secret
        self._key = secret.encode()

    def mint(self, user: str, topics: list[str] | tuple[str, ...] = (), ttl: int = 3600) -> str:
        if not valid_name(user):
            raise AuthError(f"invalid user id {user[:64]!r}", slug="invalid_user")
        if len(topics) > MAX_TOPICS:
            raise AuthError(f"a token lists at most {MAX_TOPICS} topics", slug="invalid_topic")
        bad = [t for t in topics if not valid_name(t)]
        if bad:
            raise AuthError(f"invalid topic {bad[0][:64]!r}", slug="invalid_topic")
        now = int(time.time())
        claims: dict[str, object] = {"sub": user, "iat": now, "exp": now + ttl}
        if topics:
            claims["topics"] = list(topics)
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def verify(self, token: str, now: float | None = None) -> Claims:
        """Return the token's claims; raise :class:`AuthError` (close 4001) saying why not.

        HS256 only (the header must say so); the signature is checked over the token's own
        text in constant time before its claims are read; ``exp`` is required, ``nbf`` honoured.
        This runs once per connection, so it is done directly: a generic JWT library spends
        most of its time re-preparing the key on every call.
        """
        parts = token.split(".")
        if len(parts) != 3 or not all(_B64URL.match(p) for p in parts):
            raise AuthError("invalid token: not a compact JWT", slug="invalid_token")
        head, body, signature = parts
        try:
            header = orjson.loads(_unb64(head))
            given = _unb64(signature)
        except (ValueError, binascii.Error):
            raise AuthError("invalid token: undecodable header", slug="invalid_token") from None
        if not isinstance(header, dict) or header.get("alg") != ALGORITHM:
            raise AuthError("invalid token: the algorithm must be HS256", slug="invalid_token")
        expected = hmac.new(self._key, f"{head}.{body}".encode("ascii"), hashlib.sha256).digest()
        if not hmac.compare_digest(expected, given):
            raise AuthError("invalid token: signature verification failed", slug="invalid_token")
        try:
            claims = orjson.loads(_unb64(body))
        except (ValueError, binascii.Error):
            raise AuthError("invalid token: undecodable claims", slug="invalid_token") from None
        if not isinstance(claims, dict):
            raise AuthError("invalid token: claims must be an object", slug="invalid_token")
        now = time.time() if now is None else now
        exp, nbf = claims.get("exp"), claims.get("nbf", 0)
        if not _number(exp) or not _number(nbf):
            raise AuthError("invalid token: exp must be a number of seconds", slug="invalid_token")
        if exp <= now:
            raise AuthError("token expired", slug="token_expired")
        if nbf > now:
            raise AuthError("invalid token: not valid yet (nbf)", slug="invalid_token")
        user = claims.get("sub")
        if not isinstance(user, str) or not valid_name(user):
            raise AuthError("token names no valid user", slug="invalid_token")
        topics = claims.get("topics", [])
        if (
            not isinstance(topics, list)
            or len(topics) > MAX_TOPICS
            or not all(isinstance(t, str) and valid_name(t) for t in topics)
        ):
            raise AuthError("token topics are invalid", slug="invalid_token")
        return Claims(user, tuple(topics), int(claims["exp"]))


_B64URL = re.compile(r"^[A-Za-z0-9_-]+$")


def _unb64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _number(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def api_key_ok(header: str | None, keys: list[str]) -> bool:
    """True when ``header`` is ``Bearer <key>`` for one of ``keys`` (constant-time compare)."""
    if not header or not header.startswith("Bearer "):
        return False
    given = header[7:].strip().encode()
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(given, key.encode())
    return ok


def caller_name(header: str | None, keys: list[str]) -> str | None:
    """The name of the API key ``header`` (``Bearer <key>``) presents, or None when it presents
    none of ``keys``: the scope of the caller's idempotency keys. A key has no name of its own
    yet, so its name is a short digest of it (never the secret itself)."""
    if not header or not header.startswith("Bearer "):
        return None
    given = header[7:].strip().encode()
    found = None
    for key in keys:
        if hmac.compare_digest(given, key.encode()):
            found = key
    if found is None:
        return None
    return "key-" + hashlib.sha256(found.encode()).hexdigest()[:16]
