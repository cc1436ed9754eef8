"""The pure parts of Web Push and webhooks, with tables: no server."""

from __future__ import annotations

import hashlib
import hmac
import time
from pathlib import Path

import jwt
import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pushsvc.broker.base import Escalation, PushSpec
from pushsvc.core.frames import PushKeys, PushSubscription
from pushsvc.errors import ConfigError, FrameError
from pushsvc.push import ece, vapid
from pushsvc.push.sender import retry_after
from pushsvc.push.subscriptions import checked
from pushsvc.webhooks import RETRY_FOR, event_body, event_id, retry_at, signature
from tests.reach import Browser

# RFC 8291, Appendix A
PLAINTEXT = "V2hlbiBJIGdyb3cgdXAsIEkgd2FudCB0byBiZSBhIHdhdGVybWVsb24"
AS_PRIVATE = "yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw"
UA_PUBLIC = (
    "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4"
)
SALT = "DGv6ra1nlYgDCS1FRnbzlw"
AUTH = "BTBZMqHH6r4Tts7J_aSIgg"
BODY = (
    "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS"
    "6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qu"
    "lcy4a-fN"
)


def test_encryption_matches_rfc_8291_appendix_a() -> None:
    d = ece.b64decode
    private = ec.derive_private_key(int.from_bytes(d(AS_PRIVATE), "big"), ec.SECP256R1())
    body = ece.encrypt(d(PLAINTEXT), d(UA_PUBLIC), d(AUTH), salt=d(SALT), private=private)
    assert ece.b64encode(body) == BODY


@pytest.mark.parametrize("size", [0, 1, 100, ece.MAX_PAYLOAD])
def test_a_browser_decrypts_what_is_encrypted_for_it(size: int) -> None:
    browser = Browser("https://push.example/x")
    payload = bytes(i % 251 for i in range(size))
    body = ece.encrypt(payload, browser.public, browser.auth)
    assert len(body) <= ece.RECORD_SIZE
    assert browser.decrypt(body) == payload


def test_a_payload_over_one_record_is_refused() -> None:
    browser = Browser("https://push.example/x")
    with pytest.raises(ValueError, match="limit"):
        ece.encrypt(b"x" * (ece.MAX_PAYLOAD + 1), browser.public, browser.auth)


@pytest.mark.parametrize(
    ("text", "raw"), [("AQID", b"\1\2\3"), ("AQI", b"\1\2"), ("-_8", b"\xfb\xff"), ("", b"")]
)
def test_base64url_with_or_without_padding(text: str, raw: bytes) -> None:
    assert ece.b64decode(text) == raw


@pytest.mark.parametrize("text", ["!!!!", "AQ D", "A%ID", "A"])
def test_base64url_refuses_other_characters(text: str) -> None:
    with pytest.raises(ValueError):  # binascii.Error is a ValueError
        ece.b64decode(text)


def test_vapid_jwt_names_the_origin_expires_within_a_day_and_is_reused(tmp_path: Path) -> None:
    pem, public = vapid.generate()
    (tmp_path / "k.pem").write_text(pem)
    key = vapid.Vapid.load(tmp_path / "k.pem", "mailto:ops@hospital.example")
    assert key.public_key == public
    now = time.time()
    header = key.authorization("https://fcm.googleapis.com:443/fcm/send/abc?x=1", now)
    scheme, _, rest = header.partition(" ")
    params = dict(p.strip().split("=", 1) for p in rest.split(","))
    assert scheme == "vapid" and params["k"] == public
    point = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), ece.b64decode(public))
    claims = jwt.decode(
        params["t"], point, algorithms=["ES256"], audience="https://fcm.googleapis.com:443"
    )
    assert now < claims["exp"] <= now + 24 * 3600
    assert claims["sub"] == "mailto:ops@hospital.example"
    assert key.authorization("https://fcm.googleapis.com:443/other", now + 60) == header
    later = key.authorization("https://fcm.googleapis.com:443/other", now + 7 * 3600)
    assert later != header
    other = key.authorization("https://updates.push.services.mozilla.com/wpush/v2/x", now)
    assert other != header


def test_a_vapid_key_that_cannot_be_used_is_a_config_error(tmp_path: Path) -> None:
    pem, _ = vapid.generate()
    (tmp_path / "k.pem").write_text(pem)
    with pytest.raises(ConfigError, match="SUBJECT"):
        vapid.Vapid.load(tmp_path / "k.pem", "ops@hospital.example")
    with pytest.raises(ConfigError, match="cannot read"):
        vapid.Vapid.load(tmp_path / "missing.pem", "mailto:a@b.c")
    (tmp_path / "junk.pem").write_text("not a key")
    with pytest.raises(ConfigError, match="cannot read"):
        vapid.Vapid.load(tmp_path / "junk.pem", "mailto:a@b.c")
    p384 = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (tmp_path / "p384.pem").write_bytes(p384)
    with pytest.raises(ConfigError, match="P-256"):
        vapid.Vapid.load(tmp_path / "p384.pem", "mailto:a@b.c")


GOOD = Browser("https://push.example/ok").subscription()["keys"]


@pytest.mark.parametrize(
    ("endpoint", "p256dh", "auth", "problem"),
    [
        ("https://fcm.googleapis.com/fcm/send/x", GOOD["p256dh"], GOOD["auth"], ""),
        ("http://localhost:8000/push/x", GOOD["p256dh"], GOOD["auth"], ""),
        ("http://127.0.0.1:8000/push/x", GOOD["p256dh"], GOOD["auth"], ""),
        ("http://[::1]:8000/push/x", GOOD["p256dh"], GOOD["auth"], ""),
        ("http://push.example/x", GOOD["p256dh"], GOOD["auth"], "https"),
        ("http://10.0.0.1/x", GOOD["p256dh"], GOOD["auth"], "https"),
        ("wss://push.example/x", GOOD["p256dh"], GOOD["auth"], "https"),
        ("https:///x", GOOD["p256dh"], GOOD["auth"], "https"),
        ("https://[::1/x", GOOD["p256dh"], GOOD["auth"], "URL"),
        ("https://push.example/x", GOOD["p256dh"][:-4], GOOD["auth"], "p256dh"),
        ("https://push.example/x", "A" + GOOD["p256dh"][1:], GOOD["auth"], "p256dh"),
        ("https://push.example/x", "BA" + "A" * 85, GOOD["auth"], "not a point"),
        ("https://push.example/x", GOOD["p256dh"], GOOD["auth"] + "AA", "auth"),
        ("https://push.example/x", GOOD["p256dh"], "a*b%", "base64url"),
    ],
)
def test_subscriptions_are_checked(endpoint: str, p256dh: str, auth: str, problem: str) -> None:
    given = PushSubscription(endpoint, PushKeys(p256dh, auth))
    if not problem:
        sub = checked(given, 5.0)
        assert (sub.endpoint, sub.p256dh, sub.auth, sub.seen) == (endpoint, p256dh, auth, 5.0)
        return
    with pytest.raises(FrameError, match=problem) as caught:
        checked(given, 5.0)
    assert (caught.value.slug, caught.value.code) == ("invalid_subscription", 4003)


def test_webhook_signature_is_hmac_sha256_of_t_dot_body() -> None:
    body = b'{"id":"evt_1"}'
    expected = hmac.new(b"sekrit", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert signature("sekrit", 1700000000, body) == f"t=1700000000,v1={expected}"


def test_an_event_has_one_id_whoever_makes_it_and_the_body_of_the_contract() -> None:
    e = Escalation(message_id="m1", user="p1", event="queue.called", published_at=10.5,
                   expires_at=99.0, after=30, push=PushSpec(after=30, title="t"))  # fmt: skip
    assert event_id("m1", "p1", "message.unacked") == event_id("m1", "p1", "message.unacked")
    ids = {event_id(m, u, k) for m in ("m1", "m2") for u in ("p1", "p2") for k in ("a", "b")}
    assert len(ids) == 8
    body = msgspec.json.decode(event_body("message.unacked", e, 1234.9, {"after": 30}))
    assert body == {
        "id": event_id("m1", "p1", "message.unacked"), "type": "message.unacked",
        "created": 1234, "detail": {"after": 30},
        "message": {"id": "m1", "event": "queue.called", "user": "p1", "published_at": 10.5},
    }  # fmt: skip


def test_webhook_retries_back_off_exponentially_for_24_hours() -> None:
    created = now = 1000.0
    delays = []
    attempts = 0
    while True:
        attempts += 1
        at = retry_at(attempts, created, now)
        if at is None:
            break
        delays.append(at - now)
        now = at
    assert 0.8 <= delays[0] <= 1.0 and 1.6 <= delays[1] <= 2.0 and 3.2 <= delays[2] <= 4.0
    assert max(delays) <= 3600
    assert RETRY_FOR - 3600 <= now - created <= RETRY_FOR
    assert 30 <= attempts <= 45


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None), ("", None), ("7", 7.0), (" 120 ", 120.0), ("soon", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 30.0),  # 30 s after the "now" below
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),  # in the past: now
    ],
)  # fmt: skip
def test_retry_after_is_seconds_or_a_date(value: str | None, expected: float | None) -> None:
    now = 1445412450.0  # Wed, 21 Oct 2015 07:27:30 GMT
    assert retry_after(value, now) == expected


async def test_a_subscription_with_keys_no_browser_made_is_gone_without_a_request() -> None:
    from pushsvc.broker.base import Subscription
    from pushsvc.push.sender import WebPush

    sender = WebPush(vapid.Vapid(ec.generate_private_key(ec.SECP256R1()), "mailto:a@b.c"))
    try:
        sub = Subscription(endpoint="http://127.0.0.1:9/never", p256dh="BA" + "A" * 85,
                           auth=ece.b64encode(bytes(16)), seen=0.0)  # fmt: skip
        answer = await sender.send(sub, b"{}", ttl=60, urgency="normal", topic="t")
    finally:
        await sender.aclose()
    assert answer.outcome == "gone" and answer.status == 0 and "keys" in answer.detail


@pytest.mark.parametrize(
    ("event", "ack", "streams", "push", "webhooks", "after_setting", "timers"),
    [
        # (event, ack, streams, push, webhooks on, escalate_after, expected (user, after, due))
        ("queue.called", True, ["user:p1", "user:p2"], PushSpec(after=30, title="t"), False,
         None, [("p1", 30, 130.0), ("p2", 30, 130.0)]),
        ("queue.called", True, ["user:p1"], None, False, None, []),
        ("queue.called", True, ["user:p1"], None, True, None, [("p1", 0, 1100.0 + 10)]),
        ("queue.called", True, ["user:p1"], None, True, 60, [("p1", 60, 160.0)]),
        ("queue.called", True, ["topic:t", "all"], None, True, 60, []),
        ("queue.called", False, ["user:p1"], None, True, 60, []),
        ("pushsvc.canary", True, ["user:c"], None, True, 60, []),
    ],
)  # fmt: skip
async def test_which_messages_get_timers(
    event: str,
    ack: bool,
    streams: list[str],
    push: PushSpec | None,
    webhooks: bool,
    after_setting: int | None,
    timers: list[tuple[str, int, float]],
    tmp_path: Path,
) -> None:
    from pushsvc.broker.memory import MemoryBroker
    from pushsvc.push.escalator import Escalator
    from pushsvc.settings import Settings
    from pushsvc.types import Message

    pem, _ = vapid.generate()
    (tmp_path / "k.pem").write_text(pem)
    settings = Settings(
        vapid_private_key=tmp_path / "k.pem", vapid_subject="mailto:a@b.c",
        webhook_urls=["http://127.0.0.1:9/h"] if webhooks else [], webhook_secret="s",
        escalate_after=after_setting,
    )  # fmt: skip
    escalator = Escalator(MemoryBroker(), settings)
    try:
        m = Message("m1", event, msgspec.Raw(b"{}"), 100_000, ack, 1_100_000)
        planned = escalator.plan(m, streams, push)
    finally:
        await escalator.aclose()
    assert [(e.user, e.after, due) for e, due in planned] == timers
    for e, _ in planned:
        assert e.data == (msgspec.Raw(b"{}") if push else msgspec.Raw(b"null"))
