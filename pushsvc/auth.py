"""Client tokens (HS256 JWTs) and internal API keys.

A client token names its patient in ``sub`` and may list ``topics``; it must carry ``exp``.
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass

import jwt

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

    def verify(self, token: str) -> Claims:
        """Return the token's claims; raise :class:`AuthError` (close 4001) saying why not."""
        try:
            claims = jwt.decode(
                token, self._secret, algorithms=[ALGORITHM], options={"require": ["exp", "sub"]}
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired", slug="token_expired") from None
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"invalid token: {exc}", slug="invalid_token") from None
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


def api_key_ok(header: str | None, keys: list[str]) -> bool:
    """True when ``header`` is ``Bearer <key>`` for one of ``keys`` (constant-time compare)."""
    if not header or not header.startswith("Bearer "):
        return False
    given = header[7:].strip().encode()
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(given, key.encode())
    return ok
