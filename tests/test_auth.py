"""Client token verification, as a table of honest and hostile tokens (no I/O)."""

from __future__ import annotations

import base64
import time
from typing import Any

import jwt
import orjson
import pytest

from pushsvc.auth import Claims, TokenIssuer, api_key_ok
from pushsvc.errors import AuthError

SECRET = "s" * 40
NOW = 1_800_000_000.0
issuer = TokenIssuer(SECRET)


def sign(claims: dict[str, Any], key: str = SECRET, alg: str = "HS256", **headers: Any) -> str:
    return jwt.encode(claims, key, algorithm=alg, headers=headers or None)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


GOOD = {"sub": "p1", "exp": NOW + 60}


def test_a_good_token() -> None:
    assert issuer.verify(sign(GOOD), now=NOW) == Claims("p1", (), int(NOW + 60))
    assert issuer.verify(sign({**GOOD, "topics": ["c1", "c2"]}), now=NOW).topics == ("c1", "c2")
    minted = issuer.mint("p2", ["c1"], ttl=60)
    assert issuer.verify(minted).user == "p2"


def _tampered() -> str:
    head, _, sig = sign(GOOD).split(".")
    return f"{head}.{b64(orjson.dumps({'sub': 'p2', 'exp': NOW + 60}))}.{sig}"


def _alg_none() -> str:
    head = b64(orjson.dumps({"alg": "none", "typ": "JWT"}))
    return f"{head}.{b64(orjson.dumps(GOOD))}."


@pytest.mark.parametrize(
    ("token", "slug"),
    [
        (lambda: "garbage", "invalid_token"),
        (lambda: "a.b", "invalid_token"),
        (lambda: "a.b.c.d", "invalid_token"),
        (lambda: "", "invalid_token"),
        (_tampered, "invalid_token"),
        (_alg_none, "invalid_token"),
        (lambda: sign(GOOD, key="another-secret-" + "x" * 64, alg="HS512"), "invalid_token"),
        (lambda: sign(GOOD, key="another-secret-" + "x" * 30), "invalid_token"),
        (lambda: sign(GOOD, key=SECRET * 2, alg="HS512"), "invalid_token"),
        (lambda: sign({"sub": "p1"}), "invalid_token"),
        (lambda: sign({"sub": "p1", "exp": "tomorrow"}), "invalid_token"),
        (lambda: sign({"sub": "p1", "exp": True}), "invalid_token"),
        (lambda: sign({"sub": "p1", "exp": NOW - 1}), "token_expired"),
        (lambda: sign({**GOOD, "nbf": NOW + 30}), "invalid_token"),
        (lambda: sign({"exp": NOW + 60}), "invalid_token"),
        (lambda: sign({"sub": "bad user", "exp": NOW + 60}), "invalid_token"),
        (lambda: sign({**GOOD, "topics": "c1"}), "invalid_token"),
        (lambda: sign({**GOOD, "topics": ["ok", "not ok"]}), "invalid_token"),
        (lambda: sign({**GOOD, "topics": [f"t{i}" for i in range(65)]}), "invalid_token"),
        (lambda: sign(GOOD) + "=", "invalid_token"),
        (lambda: sign(GOOD).replace(".", ".\u00e9", 1), "invalid_token"),
        (lambda: b64(b"[]") + "." + sign(GOOD).split(".", 1)[1], "invalid_token"),
    ],
)
def test_hostile_tokens(token: Any, slug: str) -> None:
    with pytest.raises(AuthError) as info:
        issuer.verify(token(), now=NOW)
    assert info.value.slug == slug
    assert info.value.code == 4001


def test_a_payload_that_is_not_an_object() -> None:
    head = b64(b'{"alg":"HS256","typ":"JWT"}')
    body = b64(b"[1,2]")
    import hashlib
    import hmac

    sig = b64(hmac.new(SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest())
    with pytest.raises(AuthError):
        issuer.verify(f"{head}.{body}.{sig}", now=NOW)


def test_expiry_uses_the_clock() -> None:
    token = sign({"sub": "p1", "exp": int(time.time()) + 5})
    assert issuer.verify(token).user == "p1"
    with pytest.raises(AuthError):
        issuer.verify(token, now=time.time() + 10)


@pytest.mark.parametrize(
    ("header", "ok"),
    [("Bearer k1", True), ("Bearer k2", True), ("Bearer k3", False), ("k1", False), (None, False),
     ("Bearer ", False), ("bearer k1", False)],
)  # fmt: skip
def test_api_keys(header: str | None, ok: bool) -> None:
    assert api_key_ok(header, ["k1", "k2"]) is ok
