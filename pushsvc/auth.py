"""Client tokens (JWTs): minted here with HS256, or signed by a hospital identity provider.

A client token names its patient in ``sub`` and may list ``topics``; it must carry ``exp``, its
lifetime may not exceed ``token_max_ttl`` and its ``iat`` may not be more than
:data:`IAT_LEEWAY` seconds in the future.

Keys (``docs/security.md`` has the rotation runbook):

- ``PUSHSVC_TOKEN_SECRET`` — one HS256 secret, or ``kid:secret`` entries (comma-separated): the
  first mints (its ``kid`` in the header), every one verifies. A token without ``kid`` is checked
  against the entries without one.
- ``PUSHSVC_TOKEN_PUBLIC_KEYS`` — a PEM file of RSA / P-256 public keys (RS256 / ES256 tokens).
- ``PUSHSVC_TOKEN_JWKS_URL`` — an identity provider's JWKS (:mod:`pushsvc.jwks`), fetched in
  the background; RS256 / ES256 tokens name their key by ``kid``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeGuard

import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from pushsvc.core.streams import MAX_TOPICS, valid_name
from pushsvc.errors import AuthError, ConfigError
from pushsvc.tls import client_context

if TYPE_CHECKING:
    from pushsvc.settings import Settings

ALGORITHM = "HS256"
ASYMMETRIC = ("RS256", "ES256")
#: Seconds an ``iat`` may lie in the future (clock skew between the issuer and us).
IAT_LEEWAY = 60

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


#: The longest client token lifetime a node accepts or mints (12 h); ``token_max_ttl`` may lower it.
TOKEN_TTL_CEILING = 43_200


@dataclass(frozen=True, slots=True)
class Claims:
    user: str
    topics: tuple[str, ...]
    expires: int
    issued: int | None = None  # ``iat``, whole seconds rounded down; None when absent


class KeySource(Protocol):
    """Public keys by ``kid`` (:class:`pushsvc.jwks.JwksKeys`)."""

    def key(self, kid: str, algorithm: str) -> PublicKey | None:
        """The key ``kid`` for ``algorithm``, or None (then it may be fetched for next time)."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...


def token_secrets(text: str) -> list[tuple[str | None, str]]:
    """``PUSHSVC_TOKEN_SECRET`` as (kid, secret) pairs: ``kid:secret`` entries, comma-separated,
    or one bare secret (kid None)."""
    pairs: list[tuple[str | None, str]] = []
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        kid, colon, secret = entry.partition(":")
        pairs.append((kid, secret) if colon else (None, entry))
    return pairs


def load_pem_keys(path: Path) -> list[PublicKey]:
    """Every RSA or EC (P-256) public key of the PEM file at ``path``."""
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read PUSHSVC_TOKEN_PUBLIC_KEYS: {exc.strerror}") from None
    blocks = re.findall(rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", text, re.S)
    keys: list[PublicKey] = []
    for block in blocks:
        try:
            key = load_pem_public_key(block)
        except ValueError:
            raise ConfigError(f"{path}: a PUBLIC KEY block is not a valid key") from None
        if not isinstance(key, PublicKey):
            raise ConfigError(f"{path}: only RSA and EC (P-256) public keys are accepted")
        keys.append(key)
    if not keys:
        raise ConfigError(f"{path}: no -----BEGIN PUBLIC KEY----- block")
    return keys


class TokenIssuer:
    """Mints client tokens with the first HS256 secret and verifies tokens of every known key.

    ``secret`` is ``PUSHSVC_TOKEN_SECRET``'s text; ``public_keys`` (PEM) and ``jwks`` add
    RS256 / ES256 keys of an identity provider.
    """

    def __init__(
        self,
        secret: str,
        *,
        max_ttl: int = TOKEN_TTL_CEILING,
        public_keys: list[PublicKey] | None = None,
        jwks: KeySource | None = None,
    ) -> None:
        pairs = token_secrets(secret)
        self._mint_kid, self._mint_secret = pairs[0] if pairs else (None, "")
        self._by_kid = {kid: s.encode() for kid, s in pairs if kid is not None}
        self._unnamed = [s.encode() for kid, s in pairs if kid is None]
        self.max_ttl = max_ttl
        self._public = public_keys or []
        self._jwks = jwks

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenIssuer:
        """The issuer ``settings`` describe (call :meth:`start` before verifying JWKS tokens)."""
        from pushsvc.jwks import JwksKeys  # noqa: PLC0415 - pushsvc.jwks imports this module

        jwks = None
        if settings.token_jwks_url:
            tls = client_context(settings.ca_file) if settings.ca_file else None
            jwks = JwksKeys(settings.token_jwks_url, settings.token_jwks_refresh, tls=tls)
        public = load_pem_keys(settings.token_public_keys) if settings.token_public_keys else None
        return cls(
            settings.token_secret, max_ttl=settings.token_max_ttl, public_keys=public, jwks=jwks
        )

    async def start(self) -> None:
        """Fetch the identity provider's keys, if any, and keep them fresh (idempotent)."""
        if self._jwks is not None:
            await self._jwks.start()

    async def close(self) -> None:
        if self._jwks is not None:
            await self._jwks.close()

    def mint(self, user: str, topics: list[str] | tuple[str, ...] = (), ttl: int = 3600) -> str:
        if not valid_name(user):
            raise AuthError(f"invalid user id {user[:64]!r}", slug="invalid_user")
        if len(topics) > MAX_TOPICS:
            raise AuthError(f"a token lists at most {MAX_TOPICS} topics", slug="invalid_topic")
        bad = [t for t in topics if not valid_name(t)]
        if bad:
            raise AuthError(f"invalid topic {bad[0][:64]!r}", slug="invalid_topic")
        if ttl > self.max_ttl:
            longest = f"the longest token lifetime, {self.max_ttl} s"
            raise AuthError(f"ttl {ttl} exceeds {longest}", slug="ttl_too_long")
        if not self._mint_secret:
            raise AuthError("no token secret to mint with", slug="minting_off")
        now = int(time.time())
        claims: dict[str, object] = {"sub": user, "iat": now, "exp": now + ttl}
        if topics:
            claims["topics"] = list(topics)
        headers = {"kid": self._mint_kid} if self._mint_kid is not None else None
        return jwt.encode(claims, self._mint_secret, algorithm=ALGORITHM, headers=headers)

    def verify(self, token: str, now: float | None = None) -> Claims:
        """Return the token's claims; raise :class:`AuthError` (close 4001) saying why not.

        HS256 tokens are checked directly: the signature over the token's own text in constant
        time before its claims are read. This runs once per connection, and a generic JWT
        library spends most of its time re-preparing the key on every call. RS256 / ES256
        tokens go through PyJWT's own verification. Then, for every token: ``exp`` is required,
        ``nbf`` honoured, ``iat`` at most :data:`IAT_LEEWAY` s ahead, the lifetime within
        ``max_ttl``.
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
        if not isinstance(header, dict):
            raise AuthError("invalid token: undecodable header", slug="invalid_token")
        alg, kid = header.get("alg"), header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise AuthError("invalid token: kid must be a string", slug="invalid_token")
        if alg == ALGORITHM:
            self._check_hs256(f"{head}.{body}".encode("ascii"), given, kid)
            try:
                claims = orjson.loads(_unb64(body))
            except (ValueError, binascii.Error):
                raise AuthError("invalid token: undecodable claims", slug="invalid_token") from None
        elif alg in ASYMMETRIC and (self._public or self._jwks is not None):
            claims = self._check_public(token, alg, kid)
        else:
            raise AuthError(f"invalid token: algorithm {str(alg)[:16]!r}", slug="invalid_token")
        return self._claims(claims, time.time() if now is None else now)

    def _check_hs256(self, signed: bytes, given: bytes, kid: str | None) -> None:
        if kid is None:
            keys = self._unnamed
        else:
            known = self._by_kid.get(kid)
            keys = [known] if known is not None else []
        ok = False
        for key in keys:
            ok |= hmac.compare_digest(hmac.new(key, signed, hashlib.sha256).digest(), given)
        if not ok:
            why = "unknown key id" if not keys else "signature verification failed"
            raise AuthError(f"invalid token: {why}", slug="invalid_token")

    def _check_public(self, token: str, alg: str, kid: str | None) -> Any:
        want = rsa.RSAPublicKey if alg == "RS256" else ec.EllipticCurvePublicKey
        keys: list[PublicKey] = [k for k in self._public if isinstance(k, want)]
        if kid is not None and self._jwks is not None:
            found = self._jwks.key(kid, alg)
            if found is not None:
                keys.insert(0, found)
        for key in keys:
            try:
                return jwt.decode(
                    token,
                    key,
                    algorithms=[alg],
                    options={
                        "verify_exp": False,
                        "verify_nbf": False,
                        "verify_iat": False,
                        "verify_aud": False,
                        "verify_iss": False,
                    },
                )
            except jwt.InvalidSignatureError:
                continue
            except jwt.PyJWTError:
                raise AuthError("invalid token: undecodable", slug="invalid_token") from None
        why = "unknown key id" if not keys else "signature verification failed"
        raise AuthError(f"invalid token: {why}", slug="invalid_token")

    def _claims(self, claims: Any, now: float) -> Claims:
        if not isinstance(claims, dict):
            raise AuthError("invalid token: claims must be an object", slug="invalid_token")
        exp, nbf, iat = claims.get("exp"), claims.get("nbf", 0), claims.get("iat")
        if not _number(exp) or not _number(nbf) or (iat is not None and not _number(iat)):
            raise AuthError("invalid token: exp must be a number of seconds", slug="invalid_token")
        if exp <= now:
            raise AuthError("token expired", slug="token_expired")
        if nbf > now:
            raise AuthError("invalid token: not valid yet (nbf)", slug="invalid_token")
        if iat is not None and iat > now + IAT_LEEWAY:
            raise AuthError("invalid token: issued in the future (iat)", slug="invalid_token")
        # the lifetime is from iat (up to IAT_LEEWAY ahead: the issuer's clock may be ahead of
        # ours), or from now without one
        if exp - (now if iat is None else iat) > self.max_ttl:
            raise AuthError(
                f"invalid token: lives longer than {self.max_ttl} s", slug="invalid_token"
            )
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
        return Claims(user, tuple(topics), int(exp), None if iat is None else int(iat))


_B64URL = re.compile(r"^[A-Za-z0-9_-]+$")


def _unb64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _number(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool)
