"""Client tokens: a table of honest and hostile tokens (no I/O); kid rotation, lifetimes,\nRS256/ES256 keys made here, a JWKS served by a real HTTP server, and a real node accepting them."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from pushsvc.auth import Claims, TokenIssuer, load_pem_keys, token_secrets
from pushsvc.errors import AuthError, ConfigError
from pushsvc.jwks import JwksKeys
from tests.support import UNIT, start_node
from tests.wire import Wire

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


# -- lifetimes, kids, public keys ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("claims", "ok"),
    [
        ({"sub": "p1", "exp": NOW + 43_200}, True),
        ({"sub": "p1", "exp": NOW + 43_201}, False),  # no iat: counted from now
        ({"sub": "p1", "iat": NOW - 3600, "exp": NOW + 39_600}, True),
        ({"sub": "p1", "iat": NOW - 3600, "exp": NOW + 39_601}, False),
        ({"sub": "p1", "iat": NOW - 86_400 * 29, "exp": NOW + 86_400}, False),  # a 30-day token
        ({"sub": "p1", "iat": NOW + 60, "exp": NOW + 600}, True),  # within the clock skew
        ({"sub": "p1", "iat": NOW + 61, "exp": NOW + 600}, False),  # issued in the future
        ({"sub": "p1", "iat": "now", "exp": NOW + 600}, False),
    ],
)
def test_lifetimes_and_iat(claims: dict[str, Any], ok: bool) -> None:
    if ok:
        assert issuer.verify(sign(claims), now=NOW).user == "p1"
    else:
        with pytest.raises(AuthError) as info:
            issuer.verify(sign(claims), now=NOW)
        assert info.value.slug == "invalid_token"


def test_minting_is_capped() -> None:
    capped = TokenIssuer(SECRET, max_ttl=600)
    assert capped.verify(capped.mint("p1", ttl=600)).user == "p1"
    with pytest.raises(AuthError) as info:
        capped.mint("p1", ttl=601)
    assert info.value.slug == "ttl_too_long"


def test_a_node_whose_clock_is_behind_takes_a_token_of_the_longest_lifetime() -> None:
    issuer = TokenIssuer(SECRET, max_ttl=600)
    token = issuer.mint("p1", ttl=600)
    assert issuer.verify(token, now=time.time() - 30).user == "p1"  # 30 s behind the issuer
    with pytest.raises(AuthError):
        issuer.verify(token, now=time.time() - 90)  # beyond the leeway: iat in the future


OLD, NEW = "old-secret-" + "o" * 40, "new-secret-" + "n" * 40


def test_kid_rotation() -> None:
    before = TokenIssuer(OLD)  # no kid: the one secret of old
    step1 = TokenIssuer(f"k2:{NEW},{OLD}")  # the new one mints, the old one still verifies
    step2 = TokenIssuer(f"k2:{NEW},k1:{OLD}")
    after = TokenIssuer(f"k3:{'t' * 40},k2:{NEW}")  # k1 retired
    old_token = before.mint("p1")
    new_token = step1.mint("p2")
    assert jwt.get_unverified_header(new_token)["kid"] == "k2"
    assert "kid" not in jwt.get_unverified_header(old_token)
    assert step1.verify(old_token).user == "p1"
    assert step1.verify(new_token).user == "p2"
    assert step2.verify(new_token).user == "p2"
    assert step2.verify(sign(GOOD, OLD, kid="k1"), now=NOW).user == "p1"
    assert after.verify(new_token).user == "p2"
    for token in (old_token, sign(GOOD, OLD, kid="k1")):
        with pytest.raises(AuthError, match=r"unknown key id|signature"):
            after.verify(token, now=NOW)
    with pytest.raises(AuthError, match="signature"):  # a kid names its own secret only
        step2.verify(sign(GOOD, OLD, kid="k2"), now=NOW)
    with pytest.raises(AuthError, match="kid must be a string"):
        step2.verify(raw_hs256({"alg": "HS256", "kid": 2}, GOOD, NEW), now=NOW)


def raw_hs256(header: dict[str, Any], claims: dict[str, Any], key: str) -> str:
    """A token PyJWT would refuse to make."""
    import hashlib
    import hmac

    signed = f"{b64(orjson.dumps(header))}.{b64(orjson.dumps(claims))}"
    return f"{signed}.{b64(hmac.new(key.encode(), signed.encode(), hashlib.sha256).digest())}"


def test_token_secrets() -> None:
    assert token_secrets("a:x,b:y") == [("a", "x"), ("b", "y")]
    assert token_secrets(" plain ") == [(None, "plain")]
    assert token_secrets("k:s, ,plain") == [("k", "s"), (None, "plain")]


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def pem(*keys: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return b"".join(
        k.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo) for k in keys
    )


RSA, EC, STRANGER = rsa_key(), ec_key(), rsa_key()


def test_public_keys_from_a_pem_file(tmp_path: Path) -> None:
    path = tmp_path / "idp.pem"
    path.write_bytes(pem(RSA, EC))
    verifier = TokenIssuer(SECRET, public_keys=load_pem_keys(path))
    assert verifier.verify(jwt.encode(GOOD, RSA, algorithm="RS256"), now=NOW).user == "p1"
    assert verifier.verify(jwt.encode(GOOD, EC, algorithm="ES256"), now=NOW).user == "p1"
    assert verifier.verify(sign(GOOD), now=NOW).user == "p1"  # HS256 still works
    for token in (
        jwt.encode(GOOD, STRANGER, algorithm="RS256"),
        jwt.encode({**GOOD, "exp": NOW + 86_400}, RSA, algorithm="RS256"),  # too long
        jwt.encode({**GOOD, "iat": NOW + 120}, EC, algorithm="ES256"),
        jwt.encode(GOOD, RSA, algorithm="RS512"),
        jwt.encode({"sub": "p1"}, RSA, algorithm="RS256"),
    ):
        with pytest.raises(AuthError):
            verifier.verify(token, now=NOW)
    with pytest.raises(AuthError, match="expired"):
        verifier.verify(jwt.encode({**GOOD, "exp": NOW - 1}, EC, algorithm="ES256"), now=NOW)
    with pytest.raises(AuthError, match="algorithm"):  # no public keys: RS256 is not accepted
        issuer.verify(jwt.encode(GOOD, RSA, algorithm="RS256"), now=NOW)


@pytest.mark.parametrize(
    ("text", "said"),
    [(b"", "no -----BEGIN PUBLIC KEY"),
     (b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "not a valid key")],
)  # fmt: skip
def test_bad_pem_files(tmp_path: Path, text: bytes, said: str) -> None:
    path = tmp_path / "bad.pem"
    path.write_bytes(text)
    with pytest.raises(ConfigError, match=said):
        load_pem_keys(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_pem_keys(tmp_path / "missing.pem")


# -- JWKS from a real HTTP server ----------------------------------------------------------------


def jwk(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    algorithm = (
        jwt.algorithms.RSAAlgorithm
        if isinstance(key, rsa.RSAPrivateKey)
        else (jwt.algorithms.ECAlgorithm)
    )
    found: dict[str, Any] = orjson.loads(algorithm.to_jwk(key.public_key()))
    return {**found, "kid": kid, "use": "sig"}


class IdentityProvider:
    """A JWKS endpoint on a free port whose answer the test changes: ``keys``, or ``mode``
    ``garbage``, ``error`` (500) or ``slow``."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.mode = "ok"
        self.hits = 0
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                provider.hits += 1
                if provider.mode == "slow":
                    time.sleep(2 * UNIT)
                status, body = 200, orjson.dumps({"keys": provider.keys})
                if provider.mode == "garbage":
                    body = b"<html>not a key set</html>"
                elif provider.mode == "error":
                    status = 500
                with contextlib.suppress(OSError):  # a slow answer's client has gone
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def idp() -> Iterator[IdentityProvider]:
    provider = IdentityProvider()
    try:
        yield provider
    finally:
        provider.stop()


async def test_jwks_rotation_unknown_kid_and_bad_answers(idp: IdentityProvider) -> None:
    idp.keys = [jwk(RSA, "r1"), jwk(EC, "e1")]
    keys = JwksKeys(idp.url, refresh=3600, timeout=0.5 * UNIT, unknown_kid_interval=0.5 * UNIT)
    verifier = TokenIssuer(SECRET, jwks=keys)
    await verifier.start()
    try:
        assert idp.hits == 1
        assert verifier.verify(jwt.encode(GOOD, RSA, "RS256", {"kid": "r1"}), NOW).user == "p1"
        assert verifier.verify(jwt.encode(GOOD, EC, "ES256", {"kid": "e1"}), NOW).user == "p1"
        with pytest.raises(AuthError, match="invalid token"):  # r1 is an RSA key, not EC
            verifier.verify(jwt.encode(GOOD, EC, "ES256", {"kid": "r1"}), NOW)

        # rotation: a new kid is unknown once, fetched in the background, then accepted
        new = rsa_key()
        idp.keys = [jwk(new, "r2"), jwk(EC, "e1")]
        rotated = jwt.encode(GOOD, new, "RS256", {"kid": "r2"})
        with pytest.raises(AuthError, match="unknown key id"):
            verifier.verify(rotated, NOW)
        await wait_for(lambda: "r2" in keys.keys)
        assert verifier.verify(rotated, NOW).user == "p1"
        assert "r1" not in keys.keys  # retired by the provider

        # made-up kids cost at most one fetch per interval
        await asyncio.sleep(0.6 * UNIT)  # the interval since the fetch for r2
        hits = idp.hits
        for n in range(50):
            with pytest.raises(AuthError):
                verifier.verify(jwt.encode(GOOD, STRANGER, "RS256", {"kid": f"x{n}"}), NOW)
        await asyncio.sleep(0.2 * UNIT)
        assert idp.hits == hits + 1

        # garbage, errors, a slow answer and a dead endpoint keep the cached keys
        for mode in ("garbage", "error", "slow"):
            idp.mode = mode
            assert await keys.fetch() is False
            assert verifier.verify(rotated, NOW).user == "p1"
        idp.mode = "ok"
        idp.keys = []
        assert await keys.fetch() is False  # an empty set is not believed either
        idp.stop()
        assert await keys.fetch() is False
        assert verifier.verify(rotated, NOW).user == "p1"
    finally:
        await verifier.close()


async def test_jwks_fetching_never_blocks_verification(idp: IdentityProvider) -> None:
    idp.keys = [jwk(RSA, "r1")]
    keys = JwksKeys(idp.url, refresh=3600, timeout=3 * UNIT, unknown_kid_interval=0)
    verifier = TokenIssuer(SECRET, jwks=keys)
    await verifier.start()
    try:
        idp.mode = "slow"
        token = jwt.encode(GOOD, RSA, "RS256", {"kid": "r1"})
        started = time.monotonic()
        with pytest.raises(AuthError):  # asks for a refetch, which takes 2 units
            verifier.verify(jwt.encode(GOOD, RSA, "RS256", {"kid": "new"}), NOW)
        for _ in range(20):
            assert verifier.verify(token, NOW).user == "p1"
            await asyncio.sleep(0.01)
        assert time.monotonic() - started < UNIT
    finally:
        await verifier.close()


async def wait_for(predicate: Any, timeout: float = 5 * UNIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met"
        await asyncio.sleep(0.02)


async def test_a_node_accepts_identity_provider_tokens(
    idp: IdentityProvider, tmp_path: Path
) -> None:
    idp.keys = [jwk(RSA, "r1")]
    path = tmp_path / "static.pem"
    path.write_bytes(pem(EC))
    secret = f"k2:{NEW},k1:{OLD}"
    with start_node(token_jwks_url=idp.url, token_public_keys=path, token_secret=secret) as node:
        url = node.client_url
        for token in (
            jwt.encode({"sub": "p-idp", "exp": time.time() + 600}, RSA, "RS256", {"kid": "r1"}),
            jwt.encode({"sub": "p-idp", "exp": time.time() + 600}, EC, "ES256"),
            TokenIssuer(f"k1:{OLD}").mint("p-idp"),  # minted before the rotation
            node.token("p-idp"),  # minted now, with k2
        ):
            wire = await Wire.open(url, token)
            assert wire.welcome["user"] == "p-idp"
            await wire.close()
        assert jwt.get_unverified_header(node.token("p-idp"))["kid"] == "k2"
        stranger = jwt.encode(
            {"sub": "p1", "exp": time.time() + 600}, STRANGER, "RS256", {"kid": "r1"}
        )
        long_lived = TokenIssuer(f"k2:{NEW}", max_ttl=10**7).mint("p1", ttl=30 * 86_400)
        for token in (stranger, long_lived):
            wire = await Wire.open(url, None)
            await wire.send({"type": "hello", "token": token, "device": "d"})
            code, _, _ = await wire.closed()
            assert code == 4001
        r = node.api("POST", "/v1/tokens", json={"user": "p1", "ttl": 43_201})  # over the ceiling
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_body"
        assert r.json()["error"]["details"][0]["loc"] == ["ttl"], r.text
